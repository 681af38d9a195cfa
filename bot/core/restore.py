"""Restore: stream a stored copy back (checksum → decrypt → decompress → pg_restore) into a new
database, over the target in one transaction, or into another server; then verify."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bot.core import toc
from bot.core.catalog import Backup, Catalog
from bot.core.codec import HashingReader, ProcessSink, decode
from bot.core.inspect import inspect_database
from bot.core.pgtools import (
    Command,
    ConnInfo,
    check_not_transaction_pooler,
    check_tool_not_older,
    server_version,
)
from bot.core.redact import redact
from bot.core.storage.base import Storage
from bot.core.verify import Check, Report, compare, verify_copy
from bot.errors import BackupbotError, IntegrityError, NotFound, RestoreError

MODES = ("into", "in-place", "to")
_DBNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


@dataclass
class RestoreRequest:
    backup_id: str
    mode: str = "into"  # into | in-place | to
    into: str | None = None  # new database name (mode "into")
    target: str | None = None  # named target whose server receives the restore
    to_url: str | None = field(default=None, repr=False)  # mode "to": an explicit database URL
    table: str | None = None  # schema.name
    with_roles: bool = False


@dataclass
class RestoreOutcome:
    backup: Backup
    destination: str  # host:port/dbname, never a password
    dest_url: str = field(repr=False)
    mode: str = "into"
    report: Report = field(default_factory=Report)
    duration_s: float = 0.0
    run_id: int = 0
    roles_created: list[str] = field(default_factory=list)


def default_scratch_name(database: str, now: datetime) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", database or "db")[:40]
    return f"{base}_restore_{now:%Y%m%d_%H%M%S}"


def parse_table(table: str) -> tuple[str, str]:
    schema, dot, name = table.partition(".")
    if not dot:
        schema, name = "public", table
    if not schema or not name:
        raise RestoreError(f"--table must be schema.name, got {table!r}")
    return schema, name


def pick_copy(backup: Backup, storages: Sequence[Storage]) -> list[Storage]:
    """Stored copies in preference order (local first: fastest, no egress cost)."""
    by_name = {s.name: s for s in storages}
    usable = [by_name[c.destination] for c in backup.copies
              if c.status == "stored" and c.destination in by_name]
    if not usable:
        known = "; ".join(f"{c.destination}: {c.status}" + (f" ({c.error})" if c.error else "") for c in backup.copies)
        raise IntegrityError(f"backup {backup.id} has no intact copy in the configured destinations ({known}); "
                             "choose another backup")
    return sorted(usable, key=lambda s: 0 if s.name == "local" else 1)


def precheck(backup: Backup, storage: Storage) -> None:
    """Read the whole copy once and compare its SHA-256 before anything is touched."""
    reader = HashingReader(storage.open_reader(backup.object_key), backup.sha256,
                           f"the {storage.name} copy of {backup.id}")
    try:
        while reader.read(1 << 20):
            pass
    finally:
        close = getattr(reader.raw, "close", None)
        if close:
            close()


def load_roles_sql(backup: Backup, storage: Storage, identity_file: Path | None) -> str:
    key = backup.manifest.get("roles_dump") or backup.manifest.get("files", {}).get("roles")
    if not key:
        raise RestoreError(f"backup {backup.id} has no roles dump")
    blob = storage.get_bytes(key)
    if backup.encryption_key_id:
        import pyrage

        from bot.core.codec import load_identities

        blob = bytes(pyrage.decrypt(blob, load_identities(identity_file)))  # type: ignore[arg-type]
    return blob.decode("utf-8")


_CREATE_ROLE = re.compile(r'^CREATE ROLE ("(?:[^"]|"")+"|\S+?);$')
_ALTER_ROLE = re.compile(r'^ALTER ROLE ("(?:[^"]|"")+"|\S+?) ')


def _role_name(token: str) -> str:
    return token[1:-1].replace('""', '"') if token.startswith('"') else token


def apply_roles(roles_sql: str, conn: psycopg.Connection[Any], reserved: frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """Create the roles of a roles dump that do not exist yet; never alter existing or reserved
    roles. Returns (created, problems)."""
    existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    created: list[str] = []
    problems: list[str] = []
    skip: set[str] = set(existing) | set(reserved)
    for stmt in (s.strip() for s in roles_sql.splitlines()):
        if not stmt or stmt.startswith("--") or stmt.startswith("SET ") or stmt.startswith("\\"):
            continue
        m = _CREATE_ROLE.match(stmt)
        a = _ALTER_ROLE.match(stmt)
        name = _role_name((m or a).group(1)) if (m or a) else None
        if name is not None and (name in skip or name.startswith("pg_")):
            continue
        try:
            with conn.transaction():
                conn.execute(stmt)  # type: ignore[arg-type]  # statements come from pg_dumpall
            if m and name:
                created.append(name)
        except psycopg.Error as exc:
            msg = (exc.diag.message_primary or str(exc)).strip()
            if "already a member" in msg or "already exists" in msg:
                continue
            problems.append(f"{stmt[:120]} — {msg}")
    return created, problems


def restore(
    *,
    request: RestoreRequest,
    backup: Backup,
    dest_url: str,
    catalog: Catalog,
    storages: Sequence[Storage],
    identity_file: Path | None,
    bindir: Path | None,
    actor: str,
    source: str,
    reserved_roles: frozenset[str] = frozenset(),
    progress: Callable[[str], None] | None = None,
    extra_pg_restore_args: Sequence[str] = (),
    toc_filter: Callable[[list[toc.TocEntry]], list[toc.TocEntry]] | None = None,
    maintenance_work_mem: str = "512MB",
    after_restore: Callable[[psycopg.Connection[Any], Report], None] | None = None,
) -> RestoreOutcome:
    """Run one restore. ``dest_url`` is the server/database chosen by the caller (services)."""
    say = progress or (lambda _m: None)
    info = ConnInfo.parse(dest_url)
    check_not_transaction_pooler(info)
    run_id = catalog.start_run("restore", backup.target, actor, source,
                               {"backup_id": backup.id, "mode": request.mode, "destination": info.describe(),
                                "table": request.table})
    t0 = time.monotonic()
    created_db: str | None = None
    try:
        copies = pick_copy(backup, storages)
        storage = None
        errors: list[str] = []
        for candidate in copies:
            try:
                precheck(backup, candidate)
                storage = candidate
                break
            except (IntegrityError, NotFound) as exc:
                errors.append(exc.message)
                catalog.set_copy_status(backup.id, candidate.name, "corrupt" if isinstance(exc, IntegrityError) else "missing", exc.message)
        if storage is None:
            raise IntegrityError(f"no intact copy of {backup.id}: " + "; ".join(errors))
        say(f"checksum of the {storage.name} copy matches")

        # A database made by "into" does not exist yet: ask the server through its maintenance db.
        major, server_full = server_version(info.with_db("postgres") if request.mode == "into" else info)
        pg_restore = Command("pg_restore", bindir)
        check_tool_not_older(pg_restore, major, server_full)

        roles_created: list[str] = []
        role_problems: list[str] = []
        if request.with_roles:
            roles_sql = load_roles_sql(backup, storage, identity_file)
            role_info = info.with_db("postgres") if request.mode == "into" else info
            with psycopg.connect(role_info.conninfo(), autocommit=True) as conn:
                roles_created, role_problems = apply_roles(roles_sql, conn, reserved_roles)
            say(f"roles: {len(roles_created)} created" + (f", {len(role_problems)} problems" if role_problems else ""))

        if request.mode == "into":
            created_db = info.dbname
            _create_database(info, created_db)
            say(f"created database {created_db}")

        args = ["--no-password", "--exit-on-error", "--single-transaction", f"--dbname={info.safe_conninfo()}"]
        if request.mode in ("in-place", "to"):
            args += ["--clean", "--if-exists"]
        list_file = None
        if request.table or toc_filter is not None:
            list_file = _restore_list(backup, storage, identity_file, bindir, request.table, toc_filter)
            args += ["--use-list", str(list_file)]
        args += list(extra_pg_restore_args)
        try:
            _stream_restore(backup, storage, pg_restore, args, info, identity_file, maintenance_work_mem)
        finally:
            if list_file is not None:
                list_file.unlink(missing_ok=True)
        say("pg_restore finished")

        with psycopg.connect(info.conninfo(), autocommit=True) as conn:
            excluded = tuple((backup.manifest.get("profile") or {}).get("excluded_schemas", {}))
            facts = inspect_database(conn, exact_max_rows=10**12, excluded_schemas=excluded)
            report = compare(backup.manifest, facts, only_table=_qualified(request.table),
                             check_sequences=request.table is None)
            if role_problems:
                report.checks.append(Check(False, "roles dump applied", "; ".join(role_problems)[:1500]))
            if after_restore is not None:
                after_restore(conn, report)
        duration = round(time.monotonic() - t0, 3)
        status = "ok" if report.ok else "failed"
        catalog.finish_run(run_id, status, backup_id=backup.id, rto_s=duration,
                           error=None if report.ok else "verification: " + "; ".join(c.line() for c in report.failures)[:2000],
                           details={"backup_id": backup.id, "mode": request.mode, "destination": info.describe(),
                                    "report": report.as_json()})
        return RestoreOutcome(backup, info.describe(), dest_url, request.mode, report, duration, run_id, roles_created)
    except BaseException as exc:
        if created_db:
            _drop_database(info, created_db)
        msg = exc.message if isinstance(exc, BackupbotError) else f"{type(exc).__name__}: {redact(exc)}"
        catalog.finish_run(run_id, "failed", backup_id=backup.id, error=msg)
        if isinstance(exc, BackupbotError) or not isinstance(exc, Exception):
            raise
        raise RestoreError(f"restore of {backup.id} failed: {msg}") from exc


def _restore_list(backup: Backup, storage: Storage, identity_file: Path | None, bindir: Path | None,
                  table: str | None, toc_filter: Callable[[list[toc.TocEntry]], list[toc.TocEntry]] | None) -> Path:
    """Read the archive's table of contents and write the `--use-list` file for this restore."""
    check = verify_copy(backup, storage, identity_file=identity_file, bindir=bindir)
    if not check.ok:
        raise IntegrityError(check.error or f"cannot read the table of contents of {backup.id}")
    entries = toc.parse(check.toc)
    if table:
        schema, name = parse_table(table)
        entries = toc.one_table(entries, schema, name)
        if not any(e.desc == "TABLE" for e in entries):
            raise NotFound(f"table {schema}.{name} is not in backup {backup.id}")
    if toc_filter is not None:
        entries = toc_filter(entries)
    fd, path = tempfile.mkstemp(prefix="backupbot-", suffix=".list")
    with os.fdopen(fd, "w") as f:
        f.write(toc.list_file(entries))
    return Path(path)


def _qualified(table: str | None) -> str | None:
    if not table:
        return None
    schema, name = parse_table(table)
    return f"{schema}.{name}"


def _stream_restore(backup: Backup, storage: Storage, pg_restore: Command, args: list[str],
                    info: ConnInfo, identity_file: Path | None, work_mem: str) -> None:
    reader = HashingReader(storage.open_reader(backup.object_key), backup.sha256,
                           f"the {storage.name} copy of {backup.id}")
    # lock_timeout: a restore waiting on the application's locks fails clearly instead of hanging;
    # maintenance_work_mem: index and constraint builds sort in memory (the slow part of a load).
    ours = f"-c lock_timeout=60s -c maintenance_work_mem={work_mem}"
    env_info = ConnInfo({**info.params, "options": f"{info.params.get('options', '')} {ours}".strip()})
    proc = pg_restore.popen(args, env_info, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    sink = ProcessSink(proc.proc.stdin)  # type: ignore[arg-type]
    try:
        decode(reader, sink, encrypted=bool(backup.encryption_key_id), identity_file=identity_file)  # type: ignore[arg-type]
    except BaseException:
        # The final chunk was never handed over, so pg_restore has not committed: killing it
        # rolls the single transaction back and leaves the destination as it was.
        proc.kill()
        raise
    finally:
        close = getattr(reader.raw, "close", None)
        if close:
            close()
    sink.close()
    proc.check_restore()


def _admin_conn(info: ConnInfo) -> psycopg.Connection[Any]:
    """A connection to the server's maintenance database, for CREATE/DROP DATABASE."""
    for db in ("postgres", "template1"):
        try:
            return psycopg.connect(info.with_db(db).conninfo(), autocommit=True, connect_timeout=10)
        except psycopg.OperationalError:
            continue
    raise RestoreError(f"cannot connect to the maintenance database on {info.host}:{info.port}")


def _create_database(info: ConnInfo, name: str) -> None:
    if not _DBNAME.match(name):
        raise RestoreError(f"{name!r} is not a usable database name (letters, digits, _; at most 63)")
    with _admin_conn(info) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            raise RestoreError(f"database {name} already exists on {info.host}:{info.port}; "
                               "choose a new name with --into (nothing was changed)")
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise RestoreError(f"cannot create database {name}: {exc.diag.message_primary or exc}") from None


def _drop_database(info: ConnInfo, name: str) -> None:
    try:
        with _admin_conn(info) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except Exception:  # best effort: the caller is already reporting the real failure
        pass


def drop_database(dest_url: str) -> None:
    info = ConnInfo.parse(dest_url)
    _drop_database(info, info.dbname)


