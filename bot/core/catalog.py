"""The catalog: backups, their copies, every run, and the audit log, in SQLite (sqlite-utils).

A backup row exists only for a complete backup whose checksum is recorded; every attempt is a
row in ``runs`` whatever its outcome. Schema changes are numbered migrations applied at open.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from bot.core.redact import redact
from bot.errors import BackupbotError, CatalogError, NotFound


def utcnow() -> datetime:
    return datetime.now(UTC)


FUTURE_SKEW = timedelta(minutes=5)  # clock difference tolerated before a backup counts as from the future


def iso(dt: datetime | None) -> str | None:
    # Milliseconds: backups taken within one second must still sort in the order they were taken.
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if dt else None


def _start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat[stat.rfind(b")") + 2:].split()[19])  # field 22; fields after "(comm)" start at 3
    except (OSError, IndexError, ValueError):
        return None


def process_identity() -> dict[str, Any] | None:
    """This process, told apart from any other: host, boot, pid namespace, pid and start time
    (which a recycled pid does not share). None where /proc does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    start = _start_ticks(os.getpid())
    if start is None:
        return None
    return {"host": socket.gethostname(), "boot": boot, "pidns": pidns, "pid": os.getpid(), "start": start}


def parse_iso(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


# -- migrations: append only; each runs once, in order, inside a transaction ------------------

def _m1_initial(db: sqlite_utils.Database) -> None:
    db.table("backups").create(
        {
            "id": str, "target": str, "status": str, "kind": str, "tags": str,
            "created_at": str, "finished_at": str, "duration_s": float,
            "size_bytes": int, "sha256": str, "compression": str, "encryption_key_id": str,
            "server_version": str, "pg_dump_version": str, "database": str, "profile": str,
            "object_key": str, "manifest": str, "verify_status": str, "verified_at": str,
            "verify_error": str, "run_id": int,
        },
        pk="id",
        not_null={"target", "status", "created_at", "sha256", "size_bytes"},
    )
    db.table("backups").create_index(["target", "created_at"])
    db.table("copies").create(
        {
            "backup_id": str, "destination": str, "location": str, "status": str,
            "size_bytes": int, "stored_at": str, "verified_at": str, "error": str,
        },
        pk=("backup_id", "destination"),
        foreign_keys=[("backup_id", "backups", "id")],
    )
    db.table("runs").create(
        {
            "id": int, "kind": str, "target": str, "status": str, "started_at": str,
            "finished_at": str, "backup_id": str, "error": str, "actor": str, "source": str,
            "details": str,
        },
        pk="id",
    )
    db.table("runs").create_index(["target", "kind", "started_at"])
    db.table("audit").create(
        {
            "id": int, "at": str, "actor": str, "source": str, "action": str,
            "target": str, "backup_id": str, "details": str,
        },
        pk="id",
    )
    db.table("audit").create_index(["at"])


def _m2_restores(db: sqlite_utils.Database) -> None:
    db.table("runs").add_column("rto_s", float)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_m1_initial, _m2_restores]

# Feature modules (approvals, checklist, monitoring…) own their tables: each registers its own
# numbered steps under a component name, applied after the core's.
COMPONENT_MIGRATIONS: dict[str, list[Callable[[sqlite_utils.Database], None]]] = {}


def register_migrations(component: str, steps: list[Callable[[sqlite_utils.Database], None]]) -> None:
    """Called at import time by a feature module; steps are append-only like MIGRATIONS."""
    COMPONENT_MIGRATIONS[component] = steps


@dataclass
class Copy:
    destination: str
    location: str
    status: str
    size_bytes: int | None
    stored_at: str | None = None
    verified_at: str | None = None
    error: str | None = None


@dataclass
class Backup:
    id: str
    target: str
    status: str
    kind: str
    created_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    size_bytes: int
    sha256: str
    compression: str
    encryption_key_id: str | None
    server_version: str | None
    pg_dump_version: str | None
    database: str | None
    profile: str | None
    object_key: str
    verify_status: str
    verified_at: datetime | None
    tags: frozenset[str] = frozenset()
    copies: list[Copy] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.verify_status == "ok"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "status": self.status,
            "kind": self.kind,
            "created_at": iso(self.created_at),
            "finished_at": iso(self.finished_at),
            "duration_s": self.duration_s,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "compression": self.compression,
            "encrypted": bool(self.encryption_key_id),
            "encryption_key_id": self.encryption_key_id,
            "server_version": self.server_version,
            "database": self.database,
            "profile": self.profile,
            "verify_status": self.verify_status,
            "verified_at": iso(self.verified_at),
            "tags": sorted(self.tags),
            "copies": [
                {"destination": c.destination, "location": c.location, "status": c.status,
                 "size_bytes": c.size_bytes, "verified_at": c.verified_at, "error": c.error}
                for c in self.copies
            ],
        }


class _LockedDatabase(sqlite_utils.Database):
    """sqlite-utils 4 runs every query() inside a SAVEPOINT, which opens a transaction on the
    shared connection: an unlocked read in one thread would collide with another thread's
    BEGIN IMMEDIATE ("cannot start a transaction within a transaction"). So reads take the
    catalog's lock too, and their rows are fetched before it is released."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self._catalog_lock = lock
        super().__init__(conn)

    def query(self, sql: str, params: Any = None) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        with self._catalog_lock:
            rows = list(super().query(sql, params))
        return iter(rows)


class Catalog:
    """Thread-safe access to the catalog database (one connection, one lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._lock = threading.RLock()
            self.db = _LockedDatabase(conn, self._lock)
            self.migrate()
        except (sqlite3.Error, OSError) as exc:  # not a database, unreadable, read-only, disk full
            raise CatalogError(f"cannot open the catalog {self.path} (BACKUPBOT_DB): "
                               f"{getattr(exc, 'strerror', None) or exc}") from None

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def tx(self) -> Iterator[sqlite_utils.Database]:
        """One IMMEDIATE transaction under the lock: compare-and-set needs it."""
        with self._lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def migrate(self) -> int:
        with self._lock:
            if "schema_migrations" not in self.db.table_names():
                self.db.table("schema_migrations").create(
                    {"component": str, "version": int, "applied_at": str}, pk=("component", "version"))
            done = {(r["component"], r["version"]) for r in self.db.table("schema_migrations").rows}
            applied = 0
            for component, steps in [("core", MIGRATIONS), *sorted(COMPONENT_MIGRATIONS.items())]:
                for version, step in enumerate(steps, start=1):
                    if (component, version) in done:
                        continue
                    with self.tx() as db:
                        step(db)
                        db.table("schema_migrations").insert(
                            {"component": component, "version": version, "applied_at": iso(utcnow())})
                    applied += 1
            return applied

    def schema_version(self, component: str = "core") -> int:
        row = self.db.execute("SELECT max(version) FROM schema_migrations WHERE component = ?", [component]).fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        self.db.conn.close()

    # -- runs -------------------------------------------------------------------------------
    def start_run(self, kind: str, target: str | None, actor: str, source: str,
                  details: dict[str, Any] | None = None) -> int:
        with self.tx() as db:
            table = db.table("runs")
            # Who runs it: a run whose process is gone can be settled by the next start (below).
            owner = process_identity()
            table.insert({
                "kind": kind, "target": target, "status": "running", "started_at": iso(utcnow()),
                "actor": actor, "source": source,
                "details": json.dumps({**(details or {}), **({"owner": owner} if owner else {})}),
            })
            return int(table.last_pk)  # type: ignore[arg-type]

    def finish_run(self, run_id: int, status: str, *, backup_id: str | None = None,
                   error: str | None = None, details: dict[str, Any] | None = None,
                   rto_s: float | None = None) -> None:
        updates: dict[str, Any] = {"status": status, "finished_at": iso(utcnow())}
        if status == "ok" and error is None:
            updates["error"] = None  # a run settled too early by mistake must not keep that reason
        if backup_id:
            updates["backup_id"] = backup_id
        if error is not None:
            updates["error"] = redact(error)[:4000]
        if details is not None:
            updates["details"] = json.dumps(details)
        if rto_s is not None:
            updates["rto_s"] = rto_s
        with self.tx() as db:
            db.table("runs").update(run_id, updates)

    def runs(self, *, kind: str | None = None, target: str | None = None, limit: int = 50,
             status: str | None = None) -> list[dict[str, Any]]:
        where, params = self._where(kind=kind, target=target, status=status)
        return list(self.db.query(
            f"SELECT * FROM runs {where} ORDER BY started_at DESC, id DESC LIMIT ?", [*params, limit]))

    def run(self, run_id: int) -> dict[str, Any]:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        if not rows:
            raise NotFound(f"no run {run_id}")
        return rows[0]

    def mark_abandoned_runs(self, *, kind: str | None = None, target: str | None = None,
                            source: str | None = None) -> int:
        """Runs left 'running' by a crash are failures: say so instead of leaving them open.
        Callers must know nobody runs them now (services holds the target's lock)."""
        where, params = self._where(kind=kind, target=target, source=source)
        where = (where + " AND " if where else "WHERE ") + "status = 'running'"
        with self.tx() as db:
            cur = db.execute(
                f"UPDATE runs SET status='failed', finished_at=?, "
                f"error='interrupted: backupbot stopped while this ran' {where}", [iso(utcnow()), *params])
            return cur.rowcount

    def mark_orphaned_runs(self) -> int:
        """Runs left 'running' by a process that no longer exists (a CLI command killed mid-way, a
        crashed bot) are failures. Only runs of a process this one can see are judged: same host,
        boot and pid namespace (containers sharing a catalog see different pids); a pid alive with
        the recorded start time is the same process and is left alone."""
        me = process_identity()
        if me is None:
            return 0
        orphans = []
        for row in self.db.query("SELECT id, details FROM runs WHERE status = 'running'"):
            try:
                details = json.loads(row["details"] or "{}")
            except (TypeError, ValueError):
                continue
            owner = details.get("owner") if isinstance(details, dict) else None
            if not isinstance(owner, dict) or any(owner.get(k) != me[k] for k in ("host", "boot", "pidns")):
                continue
            pid, start = owner.get("pid"), owner.get("start")
            if not isinstance(pid, int) or not isinstance(start, int) or _start_ticks(pid) == start:
                continue
            orphans.append((row["id"], pid))
        with self.tx() as db:
            for run_id, pid in orphans:
                db.execute("UPDATE runs SET status='failed', finished_at=?, error=? WHERE id=? AND status='running'",
                           [iso(utcnow()), f"interrupted: the process running it (pid {pid}) is gone", run_id])
        return len(orphans)

    # -- backups ----------------------------------------------------------------------------
    def add_backup(self, row: dict[str, Any], copies: list[Copy], *, only_if_new: bool = False) -> bool:
        """Record a complete backup and its copies atomically; True if written. The same backup
        recorded already (a rescan adopted it between its storing and this) is completed, not
        duplicated; with ``only_if_new`` (a rescan, which read the storage a while ago) it is left
        as the catalog has it."""
        with self.tx() as db:
            before = list(db.execute("SELECT sha256 FROM backups WHERE id = ?", [row["id"]]).fetchall())
            if before and only_if_new:
                return False
            if before and before[0][0] != row["sha256"]:
                raise BackupbotError(f"the catalog already holds a different backup with id {row['id']}")
            db.table("backups").upsert(row, pk="id")
            for c in copies:
                db.table("copies").upsert({"backup_id": row["id"], **c.__dict__}, pk=("backup_id", "destination"))
        return True

    def add_copy(self, backup_id: str, copy: Copy) -> bool:
        """Record one more copy of a known backup, unless one is recorded there by now."""
        with self.tx() as db:
            db.table("copies").insert({"backup_id": backup_id, **copy.__dict__}, ignore=True)
            return bool(db.execute("SELECT changes()").fetchone()[0])

    def get(self, backup_id: str) -> Backup:
        rows = list(self.db.query("SELECT * FROM backups WHERE id = ?", [backup_id]))
        if not rows or rows[0]["status"] == "deleted":
            hint = " (it was deleted by retention)" if rows else ""
            raise NotFound(f"no backup with id {backup_id!r}{hint}; `backupbot list` shows the ids")
        return self._backup(rows[0])

    def list(self, *, target: str | None = None, limit: int | None = None,
             include_deleted: bool = False, kind: str | None = None) -> builtins.list[Backup]:
        where, params = self._where(target=target, kind=kind)
        if not include_deleted:
            where += (" AND " if where else "WHERE ") + "status != 'deleted'"
        sql = f"SELECT * FROM backups {where} ORDER BY created_at DESC, id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self._backup(r) for r in self.db.query(sql, params)]

    def latest_good(self, target: str, now: datetime | None = None) -> Backup | None:
        """The newest backup that can still be restored: not failed verification, and at least
        one copy stored (what the dead-man's switch, drills and status mean by 'good'). One
        stamped in the future (a clock set wrong on the host that took it) is not: it would
        keep the dead-man's switch quiet until real time caught up with it."""
        cutoff = iso((now or utcnow()) + FUTURE_SKEW)
        rows = list(self.db.query(
            "SELECT b.* FROM backups b WHERE b.target = ? AND b.status = 'complete' "
            "AND coalesce(b.verify_status, 'unverified') != 'failed' AND b.created_at <= ? "
            "AND EXISTS (SELECT 1 FROM copies c WHERE c.backup_id = b.id AND c.status = 'stored') "
            "ORDER BY b.created_at DESC, b.id DESC LIMIT 1", [target, cutoff]))
        return self._backup(rows[0]) if rows else None

    def in_use(self) -> set[str]:
        """Backups a restore is reading or waiting to read: retention must leave them alone."""
        ids = {r["bid"] for r in self.db.query(
            "SELECT json_extract(details, '$.backup_id') AS bid FROM runs "
            "WHERE kind IN ('restore', 'drill') AND status = 'running'") if r["bid"]}
        if "restore_requests" in self.db.table_names():
            ids |= {r["backup_id"] for r in self.db.query(
                "SELECT backup_id FROM restore_requests WHERE status IN ('pending', 'approved', 'running')")}
        return ids

    def set_verify(self, backup_id: str, ok: bool, error: str | None = None,
                   copy_results: dict[str, tuple[str, str | None]] | None = None) -> None:
        now = iso(utcnow())
        with self.tx() as db:
            db.table("backups").update(backup_id, {
                "verify_status": "ok" if ok else "failed", "verified_at": now,
                "verify_error": redact(error) if error else None,
            })
            for dest, (status, err) in (copy_results or {}).items():
                db.table("copies").update((backup_id, dest), {
                    "status": status, "verified_at": now, "error": redact(err) if err else None})

    def set_copy_status(self, backup_id: str, destination: str, status: str, error: str | None = None) -> None:
        with self.tx() as db:
            db.table("copies").update((backup_id, destination), {"status": status, "error": redact(error) if error else None})

    def was_deleted(self, backup_id: str) -> bool:
        """Whether retention deleted this backup (its row stays, marked deleted)."""
        return bool(list(self.db.query("SELECT 1 FROM backups WHERE id = ? AND status = 'deleted'", [backup_id])))

    def mark_deleted(self, backup_id: str) -> None:
        with self.tx() as db:
            db.table("backups").update(backup_id, {"status": "deleted"})
            db.execute("UPDATE copies SET status='deleted' WHERE backup_id=?", [backup_id])

    # -- audit ------------------------------------------------------------------------------
    def audit(self, action: str, *, actor: str, source: str, target: str | None = None,
              backup_id: str | None = None, details: dict[str, Any] | None = None) -> None:
        with self.tx() as db:
            db.table("audit").insert({
                "at": iso(utcnow()), "actor": actor, "source": source, "action": action,
                "target": target, "backup_id": backup_id,
                "details": redact(json.dumps(details or {}, default=str)),
            })

    def audit_events(self, limit: int = 20, *, action: str | None = None) -> builtins.list[dict[str, Any]]:
        where, params = self._where(action=action)
        return list(self.db.query(f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", [*params, limit]))

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _where(**filters: Any) -> tuple[str, builtins.list[Any]]:
        parts, params = [], []
        for col, value in filters.items():
            if value is not None:
                parts.append(f"{col} = ?")
                params.append(value)
        return ("WHERE " + " AND ".join(parts)) if parts else "", params

    def _backup(self, r: dict[str, Any]) -> Backup:
        copies = [
            Copy(destination=c["destination"], location=c["location"], status=c["status"],
                 size_bytes=c["size_bytes"], stored_at=c["stored_at"], verified_at=c["verified_at"],
                 error=c["error"])
            for c in self.db.query("SELECT * FROM copies WHERE backup_id = ? ORDER BY destination", [r["id"]])
        ]
        created = parse_iso(r["created_at"])
        assert created is not None
        return Backup(
            id=r["id"], target=r["target"], status=r["status"], kind=r["kind"] or "manual",
            created_at=created, finished_at=parse_iso(r["finished_at"]), duration_s=r["duration_s"],
            size_bytes=r["size_bytes"], sha256=r["sha256"], compression=r["compression"] or "zstd",
            encryption_key_id=r["encryption_key_id"], server_version=r["server_version"],
            pg_dump_version=r["pg_dump_version"], database=r["database"], profile=r["profile"],
            object_key=r["object_key"], verify_status=r["verify_status"] or "unverified",
            verified_at=parse_iso(r["verified_at"]),
            tags=frozenset(t for t in (r["tags"] or "").split(",") if t),
            copies=copies, manifest=json.loads(r["manifest"] or "{}"),
        )
