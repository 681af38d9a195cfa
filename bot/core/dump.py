"""The backup engine: pg_dump (custom format) streamed through zstd, optional age encryption and
SHA-256 to every destination; the catalog sees the backup only once it is complete."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bot.config import Settings, Target
from bot.core import profiles
from bot.core.catalog import Backup, Catalog, Copy, iso, utcnow
from bot.core.codec import Fanout, encode, key_id
from bot.core.inspect import inspect_database
from bot.core.pgtools import (
    Command,
    ConnInfo,
    check_not_transaction_pooler,
    check_tool_not_older,
    connect_error,
    server_version,
)
from bot.core.redact import redact
from bot.core.rescan import catalog_row
from bot.core.storage.base import CopyWriter, Storage, StoredObject, object_keys
from bot.core.storage.local import LocalStorage
from bot.errors import BackupbotError, ConnectionFailed, DumpError, StorageError

MANIFEST_VERSION = 1

log = logging.getLogger(__name__)


def new_backup_id(target: str, now: datetime) -> str:
    safe = re.sub(r"[^a-z0-9_-]+", "-", target.lower()).strip("-") or "db"
    return f"{safe}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


@dataclass
class BackupOutcome:
    backup: Backup
    failed_copies: dict[str, str] = field(default_factory=dict)  # destination -> error


def run_backup(
    settings: Settings,
    target: Target,
    catalog: Catalog,
    storages: Sequence[Storage],
    *,
    actor: str,
    source: str,
    kind: str = "manual",
    tags: Sequence[str] = (),
    progress: Callable[[int, float], None] | None = None,
) -> BackupOutcome:
    """Take one backup of ``target``. Every attempt is a run in the catalog; only a complete
    backup (stored somewhere, checksum recorded) becomes a backup row."""
    run_id = catalog.start_run("backup", target.name, actor, source, {"kind": kind})

    def failed(message: str) -> None:
        try:
            catalog.finish_run(run_id, "failed", error=message)
        except Exception as exc:  # the catalog cannot write (locked, disk full): keep the real reason
            log.error("could not mark backup run %s failed: %s", run_id, redact(exc))

    try:
        outcome = _backup(settings, target, catalog, storages, run_id, kind, tags, progress)
    except BackupbotError as exc:
        failed(exc.message)
        raise
    except Exception as exc:  # a bug or an unexpected library error: still one clear line
        err = DumpError(f"backup of {target.name} failed: {type(exc).__name__}: {redact(exc)}")
        failed(err.message)
        raise err from exc
    except BaseException:  # Ctrl-C, SystemExit: the run ends here too, never left 'running'
        failed("interrupted before the backup completed")
        raise
    status = "partial" if outcome.failed_copies else "ok"
    try:
        catalog.finish_run(run_id, status, backup_id=outcome.backup.id,
                           error="; ".join(f"{d}: {e}" for d, e in outcome.failed_copies.items()) or None)
    except Exception as exc:  # the backup itself is recorded: do not report it as failed
        log.error("backup %s is recorded but its run %s could not be closed: %s", outcome.backup.id, run_id,
                  redact(exc))
    return outcome


def _check_not_a_bare_mount_point(storage: Storage, target: str, catalog: Catalog) -> None:
    """Refuse to write where the target's folder has vanished although the catalog has copies
    stored in it: most likely the backup disk is not mounted, and writing would fill the disk
    underneath while every older copy read as missing."""
    if not isinstance(storage, LocalStorage):
        return
    folder = storage.root / target
    if folder.is_dir():
        return
    stored = [b.id for b in catalog.list(target=target)
              for c in b.copies if c.destination == storage.name and c.status == "stored"
              and c.location and Path(c.location).parent == folder]
    if stored:
        raise StorageError(
            f"{folder} is not there, though {len(stored)} backup(s) of {target} were stored in it: is the disk "
            f"unmounted? Mount it and back up again. If those backups are really gone, create the folder "
            f"(mkdir -p {folder}); `backupbot verify` then records them missing")


def _backup(settings: Settings, target: Target, catalog: Catalog, storages: Sequence[Storage],
            run_id: int, kind: str, tags: Sequence[str], progress: Callable[[int, float], None] | None,
            ) -> BackupOutcome:
    info = ConnInfo.parse(target.database_url)
    check_not_transaction_pooler(info)

    failed: dict[str, str] = {}
    usable: list[Storage] = []
    for storage in storages:
        try:
            storage.check_writable()
            _check_not_a_bare_mount_point(storage, target.name, catalog)
            usable.append(storage)
        except BackupbotError as exc:
            failed[storage.name] = exc.message
    if not usable:
        raise StorageError("; ".join(failed.values()) or "no destination is configured")

    major, server_full = server_version(info)
    pg_dump = Command("pg_dump", settings.pg_bindir)
    _, dump_version = check_tool_not_older(pg_dump, major, server_full)
    pg_dumpall = Command("pg_dumpall", settings.pg_bindir)

    started = utcnow()
    t0 = time.monotonic()
    backup_id = new_backup_id(target.name, started)
    encrypted = settings.encryption.enabled
    keys = object_keys(target.name, backup_id, encrypted)

    try:
        snap_conn = psycopg.connect(info.conninfo(), connect_timeout=10, autocommit=True)
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect to {info.describe()}: {connect_error(exc)}") from None
    with snap_conn:
        profile = profiles.resolve(snap_conn, target.profile, target.exclude_schemas)
        blocked = profiles.unreadable_schemas(snap_conn, profile)
        if blocked:
            raise DumpError(
                f"user {info.user} cannot read schema(s) {', '.join(blocked)} on {info.describe()}: "
                "grant USAGE (and SELECT on its tables) or list them in EXCLUDE_SCHEMAS"
            )
        # pg_dump locks every table it dumps and reads every sequence: one it may not read aborts
        # the whole dump, so name them all up front.
        unreadable = profiles.unreadable_relations(snap_conn, profile)
        if unreadable:
            raise DumpError(
                f"user {info.user} cannot read {', '.join(unreadable[:10])}"
                + (f" and {len(unreadable) - 10} more" if len(unreadable) > 10 else "")
                + f" on {info.describe()}: grant SELECT or exclude their schema in EXCLUDE_SCHEMAS"
            )
        # One snapshot for pg_dump and for the manifest's row counts: they describe the same data.
        snap_conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = snap_conn.execute("SELECT pg_export_snapshot()").fetchone()
        snapshot = str(row[0]) if row else ""

        args = ["--format=custom", "--compress=0", "--no-password", f"--snapshot={snapshot}",
                f"--dbname={info.safe_conninfo()}"]
        for schema in profile.excluded:
            args.append(f"--exclude-schema={schema}")
        for table in profile.excluded_tables:
            args.append(f"--exclude-table={_literal_pattern(table)}")
        writers: dict[str, CopyWriter] = {}
        try:
            for storage in usable:
                writers[storage.name] = storage.open_writer(keys["dump"])
            proc = pg_dump.popen(args, info)
        except BaseException:  # nothing half-written may stay behind
            for w in writers.values():
                w.abort()
            raise
        sink = Fanout(writers, progress)
        # The roles dump and the manifest's counts (same snapshot) run beside the stream: they
        # use the server while this thread compresses.
        side = _SideWork(lambda: pg_dumpall.run(
            ["--roles-only", "--no-role-passwords", "--no-password", f"--dbname={info.safe_conninfo()}"], info
        ).stdout, lambda: inspect_database(snap_conn, exact_max_rows=settings.exact_count_max_rows,
                                           excluded_schemas=tuple(profile.excluded),
                                           excluded_tables=tuple(profile.excluded_tables)))
        try:
            assert proc.proc.stdout is not None
            archive_bytes = encode(proc.proc.stdout, sink, level=settings.compression_level,
                                   threads=settings.compression_threads, recipients=settings.encryption.recipients)
            proc.check()
            roles_sql, facts = side.result()
        except BaseException:
            proc.kill()
            sink.abort()
            side.join()
            raise
        finally:
            if proc.proc.stdout:
                proc.proc.stdout.close()
        failed.update({name: getattr(e, "message", str(e)) for name, e in sink.failed.items()})
        snap_conn.execute("COMMIT")

    sha256 = sink.sha.hexdigest()
    stored: dict[str, StoredObject] = {}
    for name, writer in sink.writers.items():
        try:
            stored[name] = writer.commit(expected_size=sink.size, sha256=sha256)
        except BackupbotError as exc:
            writer.abort()
            failed[name] = exc.message
    if not stored:
        raise StorageError("no destination stored the backup: " + "; ".join(f"{d}: {e}" for d, e in failed.items()))

    finished = utcnow()
    duration = round(time.monotonic() - t0, 3)
    roles_blob = _maybe_encrypt(roles_sql, settings.encryption.recipients)
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "id": backup_id,
        "target": target.name,
        "kind": kind,
        "tags": sorted(tags),
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_s": duration,
        "server_version": server_full,
        "pg_dump_version": dump_version,
        "database": facts["database"],
        "host": info.host,
        "database_size_bytes": facts["database_size_bytes"],
        "size_bytes": sink.size,
        "archive_bytes": archive_bytes,  # uncompressed: the room a local (parallel) restore needs
        "sha256": sha256,
        "format": "pg_dump custom (-Fc -Z0)",
        "compression": f"zstd level {settings.compression_level}",
        "encryption": "age" if encrypted else None,
        "encryption_key_id": key_id(settings.encryption.recipients),
        "profile": profile.manifest(),
        "exact_count_max_rows": settings.exact_count_max_rows,
        "tables": facts["tables"],
        "rls_tables": facts["rls_tables"],
        "sequences": facts["sequences"],
        "roles": facts["roles"],
        "grants": facts["grants"],
        "default_acl": facts["default_acl"],
        "triggers": facts["triggers"],
        "extensions": facts["extensions"],
        "roles_dump": keys["roles"],
        "roles_sha256": hashlib.sha256(roles_blob).hexdigest(),  # of the stored (maybe encrypted) file
        "files": keys,
    }
    manifest_blob = json.dumps(manifest, indent=2, sort_keys=True).encode()
    by_name = {s.name: s for s in usable}
    for name in list(stored):
        try:
            by_name[name].put_bytes(keys["roles"], roles_blob)
            by_name[name].put_bytes(keys["manifest"], manifest_blob)
        except BackupbotError as exc:
            failed[name] = f"stored the dump but not its manifest: {exc.message}"
            for key in (keys["dump"], keys["roles"]):
                try:
                    by_name[name].delete(key)
                except BackupbotError as gone:  # (its folder vanished, say): the copy is failed regardless
                    log.warning("could not remove %s from %s: %s", key, name, gone.message)
            del stored[name]
    if not stored:
        raise StorageError("no destination stored the backup: " + "; ".join(f"{d}: {e}" for d, e in failed.items()))

    copies = [Copy(destination=name, location=obj.location, status="stored", size_bytes=obj.size,
                   stored_at=iso(finished)) for name, obj in stored.items()]
    copies += [Copy(destination=name, location="", status="failed", size_bytes=None, error=redact(err)[:2000])
               for name, err in failed.items() if name not in stored]
    try:
        catalog.add_backup(catalog_row(manifest, run_id=run_id), copies)
    except BackupbotError as exc:  # the id is taken by a different backup: nothing to rescan
        raise DumpError(f"backup {backup_id} is stored ({', '.join(stored)}) but cannot be recorded: "
                        f"{exc.message}") from exc
    except Exception as exc:  # the files are complete: say how to get them recorded
        raise DumpError(f"backup {backup_id} is stored ({', '.join(stored)}) but the catalog could not record it "
                        f"({type(exc).__name__}: {redact(exc)}); once the catalog is writable again, "
                        "`backupbot rescan` records it") from exc
    return BackupOutcome(catalog.get(backup_id), failed)


class _SideWork:
    """Two callables run in one background thread; result() re-raises their exception."""

    def __init__(self, first: Callable[[], Any], second: Callable[[], Any]) -> None:
        self._out: list[Any] = []
        self._err: BaseException | None = None

        def run() -> None:
            try:
                self._out = [first(), second()]
            except BaseException as exc:  # handed to the caller in result()
                self._err = exc

        self._thread = threading.Thread(target=run, name="backup-side", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def result(self) -> tuple[Any, Any]:
        self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out[0], self._out[1]


def _literal_pattern(qualified: str) -> str:
    """schema.table as a pg_dump pattern matching exactly that name (quotes turn off wildcards
    and case folding)."""
    schema, _, table = qualified.partition(".")
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, table))


def _maybe_encrypt(data: bytes, recipients: tuple[str, ...]) -> bytes:
    if not recipients:
        return data
    import pyrage

    return bytes(pyrage.encrypt(data, [pyrage.x25519.Recipient.from_str(r) for r in recipients]))


