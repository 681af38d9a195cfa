"""Restore: stream a stored copy back (checksum → decrypt → decompress → pg_restore) into a new
database, over the target in one transaction, or into another server; then verify."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bot.core import archive, toc
from bot.core.catalog import Backup, Catalog
from bot.core.codec import (
    DecryptError,
    HashingReader,
    ProcessSink,
    ThreadedWriter,
    decode,
    load_identities,
)
from bot.core.inspect import inspect_database
from bot.core.pgtools import (
    Command,
    ConnInfo,
    RunningTool,
    check_not_transaction_pooler,
    check_tool_not_older,
    connect_error,
    server_version,
)
from bot.core.redact import redact
from bot.core.storage.base import Storage
from bot.core.verify import (
    Check,
    Report,
    compare,
    moved_from,
    open_copy,
    precheck,
    read_roles_dump,
    verify_copy,
)
from bot.errors import (
    BackupbotError,
    IntegrityError,
    NotFound,
    RestoreError,
    StorageError,
    Terminated,
)
from bot.render.common import human_bytes

log = logging.getLogger(__name__)
PG_RESTORE_STARTED = "pg_restore started"  # progress lines the Slack flow follows
TOC_HEAD_BYTES = 16 << 20  # an archive's TOC is read from at most this much of its start

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


@dataclass
class LoadContext:
    """What restore hooks may use: the request, the destination and the archive being restored."""

    request: RestoreRequest
    backup: Backup
    info: ConnInfo
    storage: Storage
    identity_file: Path | None
    bindir: Path | None
    archive: Path | None = None  # a local, seekable copy of the archive when the hooks asked for one
    archive_fds: tuple[int, ...] = ()  # pass_fds a child needs to open ``archive`` (see Spool)

    def render(self, entries: Sequence[toc.TocEntry]) -> str:
        """The SQL pg_restore would run for these entries (what a person may have to run by hand)."""
        if not entries:
            return ""
        fd, path = tempfile.mkstemp(prefix="backupbot-", suffix=".list")
        with os.fdopen(fd, "w") as f:
            f.write(toc.list_file(entries))
        try:
            args = [f"--use-list={path}", "--file=-"]
            if self.archive is not None:
                return Command("pg_restore", self.bindir).run([*args, str(self.archive)],
                                                              pass_fds=self.archive_fds).stdout.decode("utf-8", "replace")
            return _render_streamed(self, args)
        finally:
            os.unlink(path)


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


def _unpack_intact(backup: Backup, storage: Storage, identity_file: Path | None, temp_dir: Path | None) -> Spool:
    """Spool.unpack, raising IntegrityError only when the copy itself is at fault. Decryption can
    fail before the whole copy was hashed (a wrong key fails at once): then the copy is hashed on
    its own, and if it is intact the error is the key's, raised as a RestoreError instead."""
    try:
        return Spool.unpack(backup, storage, identity_file, temp_dir)
    except DecryptError as exc:
        precheck(backup, storage)  # raises IntegrityError when the copy is corrupt
        raise RestoreError(f"{exc.message} (the {storage.name} copy itself is intact: its SHA-256 matches)") from None


def load_roles_sql(backup: Backup, storage: Storage, identity_file: Path | None) -> str:
    try:
        blob = read_roles_dump(backup, storage)  # checked: a changed file could create any role
    except NotFound as exc:
        raise RestoreError(exc.message) from None
    if backup.encryption_key_id:
        import pyrage

        blob = bytes(pyrage.decrypt(blob, load_identities(identity_file)))  # type: ignore[arg-type]
    return blob.decode("utf-8")


_NAME = r'("(?:[^"]|"")+"|[^\s;]+)'
_CREATE_ROLE = re.compile(rf'^CREATE ROLE {_NAME};$')
_ALTER_ROLE = re.compile(rf'^ALTER ROLE {_NAME} ')
_GRANT_ROLE = re.compile(rf'^GRANT {_NAME} TO {_NAME}(.*?)(?: GRANTED BY {_NAME})?;$')
# PG 15 refuses a non-superuser any mention of these attributes, even the default NO... forms.
_SUPERUSER_ATTRS = re.compile(r"\s+(NO)?(SUPERUSER|REPLICATION|BYPASSRLS)\b")
_ROLE_SETTINGS = "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"


@dataclass
class RolesApplied:
    created: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # statements that failed
    notes: list[str] = field(default_factory=list)  # what a person must finish by hand


def _role_name(token: str) -> str:
    return token[1:-1].replace('""', '"') if token.startswith('"') else token


_OTHER_ROLE = re.compile(r'\bON ROLE ("(?:[^"]|"")+"|[^\s;]+)')


def apply_roles(roles_sql: str, conn: psycopg.Connection[Any], reserved: frozenset[str] = frozenset()) -> RolesApplied:
    """Create the roles of a roles dump that do not exist yet, as the connected role (which need
    not be a superuser); never alter existing or reserved roles or their memberships."""
    existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    row = conn.execute(_ROLE_SETTINGS).fetchone()
    me, superuser = (str(row[0]), bool(row[1])) if row else ("", False)
    out = RolesApplied()
    skip: set[str] = set(existing) | set(reserved)
    can_login: list[str] = []
    for stmt in (s.strip() for s in roles_sql.splitlines()):
        # "\restrict" and "\unrestrict" (pg_dumpall 15.14+) are psql meta-commands, not SQL.
        if not stmt or stmt.startswith("--") or stmt.startswith("SET ") or stmt.startswith("\\"):
            continue
        g = _GRANT_ROLE.match(stmt)
        if g:
            granted, member, grantor = _role_name(g.group(1)), _role_name(g.group(2)), g.group(4)
            if granted in reserved:
                continue
            if member in reserved:
                # Granting an application role to a platform role changes the platform role:
                # not ours to do, but the source had it, so say exactly what to run.
                out.notes.append(f"the backup grants role {granted} to the platform role {member}; "
                                 f"run it by hand if you want the same access: GRANT {g.group(1)} TO {g.group(2)};")
                continue
            if grantor is not None and not superuser and _role_name(grantor) != me:
                # "must be superuser to set grantor": the membership itself is what matters.
                stmt = f"GRANT {g.group(1)} TO {g.group(2)}{g.group(3)};"
        elif not (stmt.startswith("CREATE ROLE ") or stmt.startswith("ALTER ROLE ")):
            # Only the forms above are applied: anything else (COMMENT ON ROLE, SECURITY LABEL…)
            # could touch a reserved or existing role, so it is reported instead of run.
            named = _OTHER_ROLE.search(stmt)
            target = _role_name(named.group(1)) if named else None
            if target is None or target in skip or target.startswith("pg_"):
                continue
            out.notes.append(f"not applied from the roles dump (run it by hand if wanted): {stmt[:300]}")
            continue
        else:
            m = _CREATE_ROLE.match(stmt)
            a = _ALTER_ROLE.match(stmt)
            name = _role_name((m or a).group(1)) if (m or a) else None  # type: ignore[union-attr]
            if name is not None and (name in skip or name.startswith("pg_")):
                continue
            if a and name is not None:
                if re.search(r"\bLOGIN\b", stmt) and name not in existing:
                    can_login.append(name)
                if not superuser and " WITH " in stmt:
                    for attr in (f"{x.group(2)}" for x in _SUPERUSER_ATTRS.finditer(stmt) if not x.group(1)):
                        out.notes.append(f"role {name} has {attr} in the backup, which only a superuser can "
                                         f"give: ALTER ROLE {a.group(1)} WITH {attr};")
                    stmt = _SUPERUSER_ATTRS.sub("", stmt)
                    if stmt.rstrip(";").endswith(" WITH"):
                        continue
        try:
            with conn.transaction():
                conn.execute(stmt)  # type: ignore[arg-type]  # statements come from pg_dumpall
            if not g and (m := _CREATE_ROLE.match(stmt)):
                out.created.append(_role_name(m.group(1)))
        except psycopg.Error as exc:
            msg = (exc.diag.message_primary or str(exc)).strip()
            if "already a member" in msg or "already exists" in msg:
                continue
            out.problems.append(f"{stmt[:120]} — {msg}")
    for name in can_login:
        if name in out.created:
            out.notes.append(f"role {name} can log in but the backup holds no password (pg_dumpall "
                             f"--no-role-passwords): set one with ALTER ROLE {name} PASSWORD '…';")
    return out


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
    toc_filter: Callable[[list[toc.TocEntry], LoadContext], list[toc.TocEntry]] | None = None,
    maintenance_work_mem: str = "512MB",
    around_load: Callable[[LoadContext], AbstractContextManager[object]] | None = None,
    after_restore: Callable[[psycopg.Connection[Any], Report, LoadContext], None] | None = None,
    seekable_archive: bool = False,
    jobs: int = 1,
    temp_dir: Path | None = None,
    before_load: Callable[[], None] | None = None,
) -> RestoreOutcome:
    """Run one restore. ``dest_url`` is the server/database chosen by the caller (services).

    Hooks (a database profile's, e.g. Supabase's) see a LoadContext: ``toc_filter`` chooses and
    orders the archive's entries, ``around_load`` wraps pg_restore's one transaction (work before
    it, undone when it fails), ``after_restore`` adds to the report. ``seekable_archive`` restores
    from a local copy instead of a stream: pg_restore can only load data in a different order than
    the archive's from a file it can seek in.

    ``jobs`` > 1 loads a new database (mode "into") with that many pg_restore connections, from
    a local copy in ``temp_dir``: tables load and indexes build side by side. There is no single
    transaction then; a failed restore drops the database it created, so nothing half-done stays.
    Without room for the local copy the restore streams in one transaction instead.

    ``before_load`` runs once a copy has been found intact and before anything touches the
    destination (services take the safety backup there: a corrupt copy fails before that, not
    after minutes of backing up); its time is not counted in the restore's duration."""
    say = progress or (lambda _m: None)
    info = ConnInfo.parse(dest_url)
    check_not_transaction_pooler(info)
    run_id = catalog.start_run("restore", backup.target, actor, source,
                               {"backup_id": backup.id, "mode": request.mode, "destination": info.describe(),
                                "table": request.table})
    t0 = time.monotonic()
    created_db: str | None = None
    archive: Spool | None = None
    created_roles: tuple[ConnInfo, list[str]] | None = None  # --with-roles: undone if the restore fails
    loaded = False  # pg_restore finished and committed
    list_file: Path | None = None  # the --use-list file, removed at the end
    try:
        parallel = request.mode == "into" and jobs > 1
        if seekable_archive or parallel:
            room = SpoolRoom.of(backup, temp_dir)
            if not room.enough:
                if seekable_archive:
                    raise RestoreError(f"{room.describe()}; set RESTORE_TEMP_DIR to a directory with more room "
                                       "(nothing was changed)")
                say(f"{room.describe()}: loading from the stream in one transaction instead")
                parallel = False
        unpack = seekable_archive or parallel  # through a local copy, else streamed
        copies = pick_copy(backup, storages)
        storage = None
        errors: list[str] = []
        unreadable = 0  # copies that could not be read (as opposed to found corrupt or missing)
        if unpack and backup.encryption_key_id:
            load_identities(identity_file)  # a missing key is ours to fix, not the copy's fault
        for candidate in copies:
            try:
                if unpack:
                    # Unpacking checks the checksum on the way: no separate reading pass.
                    try:
                        archive = _unpack_intact(backup, candidate, identity_file, temp_dir)
                    except SpoolNoRoom as exc:
                        if seekable_archive:
                            raise
                        say(f"cannot unpack into {exc.where} ({exc.reason}): loading from the stream "
                            "in one transaction instead")
                        unpack = parallel = False
                        precheck(backup, candidate)
                else:
                    precheck(backup, candidate)
                storage = candidate
                break
            except (IntegrityError, NotFound) as exc:
                elsewhere = moved_from(backup, candidate) if isinstance(exc, NotFound) else None
                if elsewhere:  # the settings moved, not the copy: nothing to record against it
                    errors.append(elsewhere)
                    unreadable += 1
                    continue
                errors.append(exc.message)
                catalog.set_copy_status(backup.id, candidate.name, "corrupt" if isinstance(exc, IntegrityError) else "missing", exc.message)
                # The backup is no longer what its verification said: retention and "latest good"
                # must stop counting on it.
                catalog.set_verify(backup.id, False, exc.message)
            except StorageError as exc:  # unreachable right now (network, permissions): try the next copy
                errors.append(moved_from(backup, candidate) or exc.message)  # a changed BACKUP_DIR may not exist
                unreadable += 1
        if storage is None:
            if unreadable == len(errors):  # nothing was found wrong with a copy: say so
                raise StorageError(f"no copy of {backup.id} could be read right now: " + "; ".join(errors))
            raise IntegrityError(f"no intact copy of {backup.id}: " + "; ".join(errors))
        say(f"checksum of the {storage.name} copy matches")

        # Everything that can refuse without touching the destination comes before before_load
        # (the safety backup): tool and server versions, the roles dump's own checksum, a --table
        # not in the archive. A database made by "into" does not exist yet: ask the server
        # through its maintenance db.
        major, server_full = server_version(info.with_db("postgres") if request.mode == "into" else info)
        pg_restore = Command("pg_restore", bindir)
        check_tool_not_older(pg_restore, major, server_full)
        roles_sql = load_roles_sql(backup, storage, identity_file) if request.with_roles else None
        ctx = LoadContext(request, backup, info, storage, identity_file, bindir)
        if archive is not None:
            ctx.archive, ctx.archive_fds = archive.path, archive.pass_fds
            say(f"archive unpacked to a local file ({human_bytes(archive.size)})"
                + (f"; loading with {jobs} connections" if parallel else "; the restore reorders data"))
        # The entries to restore are chosen now (a --table the backup lacks refuses here); a
        # profile's filter, which reads the destination, is applied to them after before_load.
        entries = _select_entries(ctx, request.table) if request.table or toc_filter is not None else None
        if before_load is not None:
            started = time.monotonic()
            before_load()
            t0 += time.monotonic() - started

        roles = RolesApplied()
        if roles_sql is not None:
            role_info = info.with_db("postgres") if request.mode == "into" else info
            with psycopg.connect(role_info.conninfo(), autocommit=True) as conn:
                roles = apply_roles(roles_sql, conn, reserved_roles)
            created_roles = (role_info, list(roles.created))
            say(f"roles: {len(roles.created)} created" + (f", {len(roles.problems)} problems" if roles.problems else ""))

        if request.mode == "into":
            _create_database(info, info.dbname)
            # Only now is it ours: a database that existed before is never dropped on failure.
            created_db = info.dbname
            say(f"created database {created_db}")

        # --verbose: on failure, stderr then names the archive entry that failed (see pgtools).
        # The session options (lock_timeout, maintenance_work_mem) travel in --dbname itself: an
        # `options` in the user's URL would otherwise override PGOPTIONS.
        args = ["--no-password", "--exit-on-error", "--verbose",
                f"--dbname={_restore_env(info, maintenance_work_mem).safe_conninfo()}"]
        args.append(f"--jobs={jobs}" if parallel else "--single-transaction")
        if request.mode in ("in-place", "to"):
            args += ["--clean", "--if-exists"]
        if entries is not None:
            list_file = _write_list(toc_filter(entries, ctx) if toc_filter is not None else entries)
            args += ["--use-list", str(list_file)]
        args += list(extra_pg_restore_args)
        with around_load(ctx) if around_load is not None else nullcontext():
            say(PG_RESTORE_STARTED)  # from here a failure rolls back (in one transaction) or drops
            if ctx.archive is not None:
                _file_restore(pg_restore, [*args, str(ctx.archive)], info, maintenance_work_mem, ctx.archive_fds)
            else:
                _stream_restore(backup, storage, pg_restore, args, info, identity_file, maintenance_work_mem)
            loaded = True  # committed: from here on the roles are in use
        say("pg_restore finished")

        with psycopg.connect(info.conninfo(), autocommit=True) as conn:
            excluded = tuple((backup.manifest.get("profile") or {}).get("excluded_schemas", {}))
            facts = inspect_database(conn, exact_max_rows=10**12, excluded_schemas=excluded)
            report = compare(backup.manifest, facts, only_table=_qualified(request.table),
                             check_sequences=request.table is None)
            if roles.problems:
                report.checks.append(Check(False, "roles dump applied", "; ".join(roles.problems)[:1500]))
            report.notes.extend(roles.notes)
            if after_restore is not None:
                after_restore(conn, report, ctx)
        duration = round(time.monotonic() - t0, 3)
        status = "ok" if report.ok else "failed"
        catalog.finish_run(run_id, status, backup_id=backup.id, rto_s=duration,
                           error=None if report.ok else "verification: " + "; ".join(c.line() for c in report.failures)[:2000],
                           details={"backup_id": backup.id, "mode": request.mode, "destination": info.describe(),
                                    "report": report.as_json()})
        return RestoreOutcome(backup, info.describe(), dest_url, request.mode, report, duration, run_id, roles.created)
    except BaseException as exc:
        left = ""
        db_gone = False
        if created_db:
            db_gone = _drop_database(info, created_db)
            if not db_gone:
                left = (f"; the partly restored database {created_db} could not be dropped: "
                        f"drop it by hand (DROP DATABASE {created_db})")
        # Roles go only when nothing restored can need them: the load never committed, or its new
        # database is gone. After the database: the roles may have owned what was in it.
        if created_roles is not None and (db_gone if created_db else not loaded):
            kept = _drop_roles(*created_roles)
            if kept:
                left += f"; roles this restore created could not be removed: {', '.join(kept)}"
        msg = (exc.message if isinstance(exc, BackupbotError)
               else "terminated (SIGTERM)" if isinstance(exc, Terminated)
               else "interrupted" if isinstance(exc, KeyboardInterrupt)
               else f"{type(exc).__name__}: {redact(exc)}") + left
        # Over an existing database, a failure after the commit (even Ctrl-C) must not read as
        # "nothing happened": the target already holds the backup's data.
        committed = loaded and not created_db
        hinted = bool(request.table and not created_db and not loaded and "other objects depend on it" in msg)
        if hinted:
            msg += (f"; other objects (foreign keys, views) depend on {request.table}, so it cannot be replaced on "
                    "its own and nothing was changed: restore it --into a new database and copy back the rows you "
                    "need, or restore the whole database")
        if committed:
            msg += (f"; pg_restore had already committed: {info.describe()} now holds the data of {backup.id}, "
                    "but its verification report did not run")
        catalog.finish_run(run_id, "failed", backup_id=backup.id, error=msg)
        if committed or hinted:
            err = RestoreError(msg if isinstance(exc, BackupbotError) else f"restore of {backup.id}: {msg}")
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C or SIGTERM: the exit status still says so
                err.exit_code = 143 if isinstance(exc, Terminated) else 130
            raise err from exc
        if not isinstance(exc, Exception) or (isinstance(exc, BackupbotError) and not left):
            raise
        raise RestoreError(msg if isinstance(exc, BackupbotError) else f"restore of {backup.id} failed: {msg}") from exc
    finally:
        if archive is not None:
            archive.remove()
        if list_file is not None:
            list_file.unlink(missing_ok=True)


def _select_entries(ctx: LoadContext, table: str | None) -> list[toc.TocEntry]:
    """The archive's entries, or those ``table`` needs (NotFound when the backup has no such
    table); reads only the archive, never the destination."""
    backup = ctx.backup
    slots: tuple[archive.TocSlot, ...] | None = None  # the archive's own TOC, with dependencies
    try:
        if ctx.archive is not None:
            listing = Command("pg_restore", ctx.bindir).run(["--list", str(ctx.archive)],
                                                            pass_fds=ctx.archive_fds).stdout.decode("utf-8", "replace")
            if table:
                fd = os.open(ctx.archive, os.O_RDONLY)
                try:
                    slots = archive.read_toc(fd, data_uncompressed=False).entries
                finally:
                    os.close(fd)
        else:
            check = verify_copy(backup, ctx.storage, identity_file=ctx.identity_file, bindir=ctx.bindir,
                                keep_head=TOC_HEAD_BYTES if table else 0)
            if not check.ok:
                raise IntegrityError(check.error or f"cannot read the table of contents of {backup.id}")
            listing = check.toc
            if table:
                head = check.head
                slots = archive.parse_toc(lambda pos, n: head[pos:pos + n], data_uncompressed=False).entries
    except archive.ArchiveFormatError as exc:  # an archive this reader does not know: go by names
        log.info("%s: selecting the table by name (%s)", backup.id, exc)
    entries = toc.parse(listing)
    if table:
        schema, name = parse_table(table)
        over_existing = ctx.request.mode == "in-place"
        if slots is not None:
            try:
                entries = toc.one_table_by_deps(entries, slots, schema, name, with_shared=not over_existing)
            except toc.Unsupported as exc:
                raise RestoreError(f"{exc} (nothing was changed)") from None
        else:
            entries = toc.one_table(entries, schema, name)
            if over_existing:  # the shared objects are there; --clean would drop and recreate them
                entries = [e for e in entries if e.desc not in ("SCHEMA", "TYPE", "DOMAIN", "FUNCTION")]
        if not any(e.desc == "TABLE" for e in entries):
            raise NotFound(f"table {schema}.{name} is not in backup {backup.id}")
    return entries


def _write_list(entries: list[toc.TocEntry]) -> Path:
    fd, path = tempfile.mkstemp(prefix="backupbot-", suffix=".list")
    with os.fdopen(fd, "w") as f:
        f.write(toc.list_file(entries))
    return Path(path)


def _qualified(table: str | None) -> str | None:
    if not table:
        return None
    schema, name = parse_table(table)
    return f"{schema}.{name}"


def _restore_env(info: ConnInfo, work_mem: str) -> ConnInfo:
    # lock_timeout: a restore waiting on the application's locks fails clearly instead of hanging;
    # maintenance_work_mem: index and constraint builds sort in memory (the slow part of a load).
    ours = f"-c lock_timeout=60s -c maintenance_work_mem={work_mem}"
    return ConnInfo({**info.params, "options": f"{info.params.get('options', '')} {ours}".strip()})


def _file_restore(pg_restore: Command, args: list[str], info: ConnInfo, work_mem: str,
                  pass_fds: tuple[int, ...] = ()) -> None:
    proc = pg_restore.popen(args, _restore_env(info, work_mem), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            pass_fds=pass_fds)
    try:
        proc.check_restore()
    except BaseException:
        proc.kill()  # interrupted before the commit: the transaction rolls back
        raise


class SpoolNoRoom(RestoreError):
    """The temporary directory could not take the unpacked archive (full, unwritable)."""

    def __init__(self, backup_id: str, where: Path, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"cannot unpack {backup_id} into {where}: {reason}; set RESTORE_TEMP_DIR to a "
                         "directory with more room (nothing was changed)")


SPOOL_MARGIN = 64 << 20  # beyond the archive itself: the list file, other writers, rounding


@dataclass(frozen=True)
class SpoolRoom:
    """Whether a local copy of a backup's archive fits in the temporary directory."""

    directory: Path
    needed: int
    free: int

    @classmethod
    def of(cls, backup: Backup, temp_dir: Path | None) -> SpoolRoom:
        directory = Path(temp_dir or tempfile.gettempdir())
        # archive_bytes is exact (manifests since it was added). Older ones get a generous guess:
        # bytea dumps as hex and TOAST-compressed text unpacks, so a dump can outgrow the
        # database; a guess too small only costs a fallback to streaming (see restore()).
        m = backup.manifest
        needed = int(m.get("archive_bytes") or max(2 * int(m.get("database_size_bytes") or 0),
                                                   8 * backup.size_bytes))
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            free = 0
        return cls(directory, needed, free)

    @property
    def enough(self) -> bool:
        return self.free >= self.needed + SPOOL_MARGIN

    def describe(self) -> str:
        return (f"an unpacked copy of the archive needs about {human_bytes(self.needed)} in {self.directory}, "
                f"which has {human_bytes(self.free)} free")


def _fill_offsets(fd: int, finder: archive.BlockFinder, backup_id: str) -> None:
    """Record the data offsets a piped pg_dump could not (see bot.core.archive): pg_restore then
    seeks to each table's data instead of scanning for it. Only ever an optimisation."""
    try:
        filled = archive.fill_offsets(fd, finder)
        log.debug("%s: data offsets recorded for %d archive entries", backup_id, filled)
    except Exception as exc:  # never worth failing a restore over
        log.debug("%s: data offsets left unset: %s", backup_id, exc)


class Spool:
    """A decrypted, decompressed archive in a private temporary file (mode 0600), checksum checked
    on the way. It holds the database's data in clear, so it has no name: created in the temporary
    directory and unlinked at once, it is reached as ``/proc/self/fd/<n>`` by our pg_restore
    children, which are given the descriptor (``pass_fds``), and the kernel frees it when the
    last of us closes it or dies (even by SIGKILL). Where /proc cannot be used it keeps its name; ``remove`` then deletes it, and the
    flock held meanwhile tells the start-up sweep (services) that it is in use."""

    def __init__(self, path: Path, fd: int, size: int, named: bool = True) -> None:
        self.path, self._fd, self.size, self.named = path, fd, size, named
        # What a child must be given for ``path`` to work in it (nothing for a named file).
        self.pass_fds: tuple[int, ...] = () if named else (fd,)

    @classmethod
    def unpack(cls, backup: Backup, storage: Storage, identity_file: Path | None, temp_dir: Path | None) -> Spool:
        def no_room(exc: OSError, where: Path) -> SpoolNoRoom:
            return SpoolNoRoom(backup.id, where, str(exc.strerror or exc))

        try:
            fd, name = tempfile.mkstemp(prefix="backupbot-", suffix=".dump", dir=temp_dir)  # mode 0600
        except OSError as exc:
            raise no_room(exc, Path(temp_dir or tempfile.gettempdir())) from None
        where = Path(name).parent
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks: only the start-up sweep relies on it
            pass
        path, named = _unname(Path(name), fd)
        reader: HashingReader | None = None
        writer: ThreadedWriter | None = None
        finder = archive.BlockFinder()
        try:
            reader = open_copy(backup, storage, prefetch=True)
            with os.fdopen(os.dup(fd), "wb") as f:
                writer = ThreadedWriter(f, observe=finder.feed)
                try:
                    decode(reader, writer, encrypted=bool(backup.encryption_key_id),  # type: ignore[arg-type]
                           identity_file=identity_file)
                finally:
                    writer.close()
                size = f.tell()
            if writer.observe_error is None:
                _fill_offsets(fd, finder, backup.id)
        except BaseException:
            if named:
                path.unlink(missing_ok=True)
            os.close(fd)
            if writer is not None and isinstance(writer.error, OSError):  # our disk, not the copy
                raise no_room(writer.error, where) from None
            raise
        finally:
            if reader is not None:
                reader.close()
        return cls(path, fd, size, named)

    def remove(self) -> None:
        if self.named:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # releases the lock; an unnamed file is freed now


def _unname(path: Path, fd: int) -> tuple[Path, bool]:
    """Unlink a new temporary file, returning the path by which a child given the descriptor
    (``pass_fds``) opens it — ``/proc/self/fd/<n>``, the child's own descriptor, which needs no
    access to our /proc entry — and False; or, where that path does not lead to this very file
    (no /proc, or one of another pid namespace), the file's own path and True."""
    alias = Path(f"/proc/self/fd/{fd}")
    try:
        seen, ours = os.stat(alias), os.fstat(fd)
        if (seen.st_dev, seen.st_ino) != (ours.st_dev, ours.st_ino):
            return path, True
        path.unlink()
    except OSError:
        return path, True
    return alias, False


def _render_streamed(ctx: LoadContext, args: list[str]) -> str:
    """pg_restore --file=- fed by a stream of the stored copy (no local archive)."""
    reader = open_copy(ctx.backup, ctx.storage)
    proc = Command("pg_restore", ctx.bindir).popen(args, None, stdin=subprocess.PIPE)
    out: list[bytes] = []
    # Read the SQL while the archive goes in, or both pipes fill up and block each other.
    collector = threading.Thread(target=lambda: out.append(proc.proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    collector.start()
    _feed(reader, proc, encrypted=bool(ctx.backup.encryption_key_id), identity_file=ctx.identity_file)
    proc.check()
    collector.join(30)
    return b"".join(out).decode("utf-8", "replace")


def _stream_restore(backup: Backup, storage: Storage, pg_restore: Command, args: list[str],
                    info: ConnInfo, identity_file: Path | None, work_mem: str) -> None:
    reader = open_copy(backup, storage)
    proc = pg_restore.popen(args, _restore_env(info, work_mem), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    _feed(reader, proc, encrypted=bool(backup.encryption_key_id), identity_file=identity_file)
    proc.check_restore()


def _feed(reader: HashingReader, proc: RunningTool, *, encrypted: bool, identity_file: Path | None) -> None:
    """Decode a stored copy into a pg_restore's stdin. On any failure the process is killed
    before it saw the copy's final chunk, so it has committed nothing: its single transaction
    rolls back and the destination stays as it was."""
    sink = ProcessSink(proc.proc.stdin)  # type: ignore[arg-type]
    try:
        decode(reader, sink, encrypted=encrypted, identity_file=identity_file)  # type: ignore[arg-type]
    except BaseException:
        proc.kill()
        raise
    finally:
        reader.close()
    sink.close()


def _admin_conn(info: ConnInfo) -> psycopg.Connection[Any]:
    """A connection to the server's maintenance database, for CREATE/DROP DATABASE."""
    why = ""
    for db in ("postgres", "template1"):
        try:
            return psycopg.connect(info.with_db(db).conninfo(), autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            why = connect_error(exc)
    raise RestoreError(f"cannot connect to the maintenance database on {info.host}:{info.port}: {why}")


def check_database_free(dest_url: str) -> None:
    """Refuse an --into name that already exists, before anything is requested or touched."""
    info = ConnInfo.parse(dest_url)
    if not _DBNAME.match(info.dbname):
        raise RestoreError(f"{info.dbname!r} is not a usable database name (letters, digits, _; at most 63)")
    with _admin_conn(info) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [info.dbname]).fetchone():
            raise RestoreError(f"database {info.dbname} already exists on {info.host}:{info.port}; "
                               "choose a new name with --into (nothing was changed)")


def _create_database(info: ConnInfo, name: str) -> None:
    if not _DBNAME.match(name):
        raise RestoreError(f"{name!r} is not a usable database name (letters, digits, _; at most 63)")
    with _admin_conn(info) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            raise RestoreError(f"database {name} already exists on {info.host}:{info.port}; "
                               "choose a new name with --into (nothing was changed)")
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):  # made meanwhile
            raise RestoreError(f"database {name} was created by someone else just now (another restore started "
                               "in the same second?); run again, or choose a name with --into "
                               "(nothing was changed)") from None
        except psycopg.Error as exc:
            raise RestoreError(f"cannot create database {name}: {exc.diag.message_primary or exc}") from None


def _drop_roles(info: ConnInfo, names: list[str]) -> list[str]:
    """Drop roles a failed restore created (nothing of theirs was committed); return those that
    could not be dropped (the caller names them)."""
    kept: list[str] = []
    if not names:
        return kept
    try:
        with psycopg.connect(info.conninfo(), autocommit=True, connect_timeout=10) as conn:
            for name in names:
                try:
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
                except psycopg.Error:
                    kept.append(name)
    except psycopg.Error:
        return list(names)
    return kept


def _drop_database(info: ConnInfo, name: str) -> bool:
    """Drop a database we created; False when that failed (the caller says so)."""
    try:
        with _admin_conn(info) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        return True
    except Exception:  # the caller is already reporting the real failure, and names this one
        return False


def drop_database(dest_url: str) -> None:
    info = ConnInfo.parse(dest_url)
    _drop_database(info, info.dbname)


