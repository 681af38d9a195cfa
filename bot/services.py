"""The composition root: settings, catalog and storages wired together, and the use cases that
both front ends (CLI and Slack) call. Nothing here knows about Slack."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bot.config import Settings, Target
from bot.core import retention
from bot.core.catalog import Backup, Catalog, parse_iso, utcnow
from bot.core.dump import BackupOutcome, run_backup
from bot.core.heartbeat import heartbeat_url, ping_heartbeat
from bot.core.pgtools import ConnInfo
from bot.core.redact import redact
from bot.core.rescan import RESCANNED_TAG, RescanResult, rescan
from bot.core.restore import (
    RestoreOutcome,
    RestoreRequest,
    check_database_free,
    default_scratch_name,
    restore,
)
from bot.core.storage import Storage, build_storages
from bot.core.verify import CopyCheck, moved_from, verify_backup
from bot.errors import BackupbotError, Refused, RestoreError

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    target: str
    decision: retention.Decision
    deleted: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False


class BackupBusy(Refused):
    def __init__(self, target: str, run: dict[str, Any] | None, tz: ZoneInfo | None = None) -> None:
        since = f" (started {_local(run['started_at'], tz or ZoneInfo('UTC'))} by {run['actor']} via {run['source']})" if run else ""
        from bot.render.common import holder_phrase

        super().__init__(f"{holder_phrase(run)} {target} is already running{since}")
        self.run = run


def _local(stamp: str, tz: ZoneInfo) -> str:
    """A stored UTC timestamp as people read it: in the configured zone."""
    from bot.render.common import local_time

    try:
        return local_time(parse_iso(stamp), tz)
    except (TypeError, ValueError):
        return str(stamp)


class Services:
    def __init__(self, settings: Settings, *, catalog: Catalog | None = None,
                 storages: Sequence[Storage] | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.catalog = catalog or Catalog(settings.catalog_path)
        self.storages: list[Storage] = list(storages) if storages is not None else build_storages(settings)
        self.clock = clock
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # Listeners (alerts, Slack) subscribe to outcomes without the core knowing about them.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    # -- events -------------------------------------------------------------------------------
    def emit(self, event: str, **data: Any) -> None:
        for listener in list(self.listeners):
            try:
                listener(event, data)
            except Exception:  # a broken notifier must never break a backup
                log.exception("listener failed for %s", event)

    # -- locking: one backup per target, across threads and processes ------------------------
    @contextmanager
    def target_lock(self, target: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(target, threading.Lock())
        if not lock.acquire(blocking=False):
            raise BackupBusy(target, self.lock_holder(target), self.settings.tz)
        try:
            path = self.settings.catalog_path.parent / f".backupbot-{target}.lock"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise BackupBusy(target, self.lock_holder(target), self.settings.tz) from None
                yield
            finally:
                os.close(fd)
        finally:
            lock.release()

    def settle_interrupted_backups(self) -> None:
        """Mark backup runs left 'running' by a crash as failed — only for targets whose lock we
        can take, so a CLI command never settles a backup a live bot (or another CLI) is taking."""
        for name in self.settings.targets:
            try:
                with self.target_lock(name):
                    self.catalog.mark_abandoned_runs(kind="backup", target=name)
            except BackupBusy:
                continue

    def running(self, target: str) -> dict[str, Any] | None:
        rows = self.catalog.runs(kind="backup", target=target, status="running", limit=1)
        return rows[0] if rows else None

    def lock_holder(self, target: str) -> dict[str, Any] | None:
        """The run holding a target's lock, when the catalog can tell: a backup, or a restore over it."""
        restores = [r for r in self.catalog.runs(kind="restore", target=target, status="running", limit=5)
                    if json.loads(r.get("details") or "{}").get("mode") == "in-place"]
        return self.running(target) or (restores[0] if restores else None)

    # -- use cases ----------------------------------------------------------------------------
    def backup(self, target: str | None = None, *, actor: str, source: str, kind: str = "manual",
               tags: Sequence[str] = (), progress: Callable[[int, float], None] | None = None) -> BackupOutcome:
        t = self.settings.target(target)
        with self.target_lock(t.name):
            outcome = self._backup_locked(t, actor=actor, source=source, kind=kind, tags=tags, progress=progress)
        # Every completed backup, whoever took it (the schedule, cron running `backupbot backup`,
        # /backup now); a safety backup before a restore is part of the restore, not a ping.
        self._ping_heartbeat()
        return outcome

    def _ping_heartbeat(self) -> None:
        # Read here, not at start-up: a mistyped HEARTBEAT_URL must not stop a restore or a list
        # (`backupbot run` still refuses to start with one), nor undo a backup that is stored.
        try:
            url = heartbeat_url(self.settings.extra)
        except BackupbotError as exc:
            log.warning("HEARTBEAT_URL not pinged: %s", exc.message)
            return
        if url:
            ping_heartbeat(url)

    def _backup_locked(self, t: Target, *, actor: str, source: str, kind: str, tags: Sequence[str] = (),
                       progress: Callable[[int, float], None] | None = None) -> BackupOutcome:
        """One backup; the caller holds the target's lock."""
        # Holding the lock, any backup run of this target still 'running' was cut short.
        self.catalog.mark_abandoned_runs(kind="backup", target=t.name)
        self.catalog.audit("backup.start", actor=actor, source=source, target=t.name, details={"kind": kind})
        try:
            outcome = run_backup(self.settings, t, self.catalog, self.storages, actor=actor, source=source,
                                 kind=kind, tags=tags, progress=progress)
        except BackupbotError as exc:
            try:
                self.catalog.audit("backup.failed", actor=actor, source=source, target=t.name,
                                   details={"error": exc.message})
            except Exception as audit_exc:  # a catalog that cannot write must not hide why the backup failed
                log.error("could not record the failed backup of %s in the audit log: %s", t.name, redact(audit_exc))
            self.emit("backup.failed", target=t.name, error=exc.message, detail=exc.detail, kind=kind)
            raise
        try:
            self.catalog.audit("backup.done", actor=actor, source=source, target=t.name, backup_id=outcome.backup.id,
                               details={"size_bytes": outcome.backup.size_bytes,
                                        "failed_copies": outcome.failed_copies})
        except Exception as exc:  # the backup is recorded; the audit line is what is lost
            log.error("could not record backup %s in the audit log: %s", outcome.backup.id, redact(exc))
        self.emit("backup.done", target=t.name, backup=outcome.backup, failed_copies=outcome.failed_copies, kind=kind)
        return outcome

    def list_backups(self, target: str | None = None, limit: int | None = None) -> list[Backup]:
        if target is not None:
            self.settings.target(target)  # unknown target: a clear error, not an empty list
        return self.catalog.list(target=target, limit=limit)

    def get_backup(self, backup_id: str) -> Backup:
        return self.catalog.get(backup_id.strip())

    def verify(self, backup_id: str, *, actor: str, source: str, notify: bool = True) -> list[CopyCheck]:
        """Verify every copy; ``notify=False`` for callers that raise one summary alert themselves
        (the weekly integrity check)."""
        backup = self.get_backup(backup_id)
        run_id = self.catalog.start_run("verify", backup.target, actor, source, {"backup_id": backup.id})
        try:
            results = verify_backup(backup, self.storages, self.catalog,
                                    identity_file=self.settings.encryption.identity_file,
                                    bindir=self.settings.pg_bindir)
        except BaseException as exc:  # never leave the run 'running'
            self.catalog.finish_run(run_id, "failed", backup_id=backup.id,
                                    error=getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")
            raise
        ok = bool(results) and all(r.ok for r in results)
        errors = "; ".join(r.error for r in results if r.error) or None
        self.catalog.finish_run(run_id, "ok" if ok else "failed", backup_id=backup.id, error=errors)
        self.catalog.audit("verify", actor=actor, source=source, target=backup.target, backup_id=backup.id,
                           details={"ok": ok})
        if not ok and notify:
            self.emit("verify.failed", target=backup.target, backup_id=backup.id, error=errors or "no copy to verify")
        return results

    def restore_destination(self, req: RestoreRequest, backup: Backup) -> tuple[str, Target | None]:
        """The database URL a restore writes to (validated, nothing touched) and its target."""
        if req.mode not in ("into", "in-place", "to"):
            raise RestoreError(f"unknown restore mode {req.mode!r}")
        if req.mode == "to":
            if not req.to_url:
                raise RestoreError("--to needs a database URL")
            if req.to_url in self.settings.targets:  # a named target: guarded like --in-place
                named = self.settings.targets[req.to_url]
                return named.database_url, named
            try:  # libpq's own complaint may quote the text, password and all: never shown
                ConnInfo.parse(req.to_url)
            except Exception:
                raise RestoreError("--to is neither a configured target ("
                                   + ", ".join(sorted(self.settings.targets)) + ") nor a valid PostgreSQL "
                                   "connection URL (postgresql://user@host:5432/dbname)") from None
            return req.to_url, None
        target = self.settings.target(req.target or backup.target)
        info = ConnInfo.parse(target.database_url)
        if req.mode == "in-place":
            return target.database_url, target
        name = req.into or default_scratch_name(backup.database or info.dbname, self.clock())
        url = ConnInfo({**info.params, "dbname": name}).conninfo()
        check_database_free(url)  # "into" promises a new database: an existing one is refused, untouched
        return url, target

    def restore(self, req: RestoreRequest, *, actor: str, source: str,
                progress: Callable[[str], None] | None = None, safety_backup: bool = True,
                on_safety_backup: Callable[[Backup], None] | None = None,
                ) -> tuple[RestoreOutcome, Backup | None]:
        backup = self.get_backup(req.backup_id)
        dest_url, target = self.restore_destination(req, backup)
        self.catalog.audit("restore.start", actor=actor, source=source, target=target.name if target else None,
                           backup_id=backup.id, details={"mode": req.mode, "destination": ConnInfo.parse(dest_url).describe(),
                                                         "table": req.table})
        safety: Backup | None = None
        # An in-place restore holds the target's lock throughout: no scheduled backup, and no
        # second restore, can run against the database while it is being replaced.
        overwrites = req.mode == "in-place" or (req.mode == "to" and target is not None)
        guard = self.target_lock(target.name) if overwrites and target is not None else nullcontext()
        try:
            with guard:
                outcome, safety = self._restore_locked(req, backup, dest_url, target, actor=actor, source=source,
                                                       progress=progress, safety_backup=safety_backup,
                                                       on_safety_backup=on_safety_backup)
        except BackupbotError as exc:
            safety = getattr(exc, "safety_backup", None)
            self.catalog.audit("restore.failed", actor=actor, source=source, backup_id=backup.id,
                               details={"error": exc.message, "safety_backup": safety.id if safety else None})
            self.emit("restore.failed", target=backup.target, backup_id=backup.id, error=exc.message,
                      safety_backup=safety.id if safety else None)
            raise
        self.catalog.audit("restore.done", actor=actor, source=source, backup_id=backup.id,
                           details={"ok": outcome.report.ok, "duration_s": outcome.duration_s,
                                    "destination": outcome.destination})
        return outcome, safety

    def _restore_locked(self, req: RestoreRequest, backup: Backup, dest_url: str, target: Target | None, *,
                        actor: str, source: str, progress: Callable[[str], None] | None, safety_backup: bool,
                        on_safety_backup: Callable[[Backup], None] | None) -> tuple[RestoreOutcome, Backup | None]:
        safety: Backup | None = None

        def take_safety_backup() -> None:
            nonlocal safety
            assert target is not None
            (progress or (lambda _m: None))(f"taking a safety backup of {target.name} first")
            try:
                safety = self._backup_locked(target, actor=actor, source=source, kind="pre-restore",
                                             tags=("pre-restore",)).backup
            except Exception as exc:
                why = exc.message if isinstance(exc, BackupbotError) else f"{type(exc).__name__}: {redact(exc)}"
                raise RestoreError(f"the safety backup of {target.name} failed, so the restore did not start and "
                                   f"{target.name} is unchanged: {why}") from exc
            if on_safety_backup is not None:  # callers report it before the restore starts
                on_safety_backup(safety)

        wants_safety = req.mode in ("in-place", "to") and safety_backup and target is not None
        try:
            from bot.core import supabase_restore

            # The safety backup comes once a copy has been found intact: a corrupt copy then fails
            # at once instead of after a backup of the whole target.
            outcome = restore(
                request=req, backup=backup, dest_url=dest_url, catalog=self.catalog, storages=self.storages,
                identity_file=self.settings.encryption.identity_file, bindir=self.settings.pg_bindir,
                actor=actor, source=source, progress=progress, maintenance_work_mem=self.settings.restore_work_mem,
                jobs=self.settings.restore_jobs, temp_dir=self.settings.restore_temp_dir,
                before_load=take_safety_backup if wants_safety else None,
                **supabase_restore.restore_hooks(backup, dest_url, req),
            )
        except BackupbotError as exc:
            exc.safety_backup = safety  # type: ignore[attr-defined]  # the caller reports it
            raise
        return outcome, safety

    def prune(self, *, dry_run: bool, actor: str, source: str, target: str | None = None) -> list[PruneResult]:
        names = [self.settings.target(target).name] if target else list(self.settings.targets)
        results = []
        for name in names:
            results.append(self._prune_target(name, dry_run=dry_run, actor=actor, source=source))
        return results

    def _prune_target(self, name: str, *, dry_run: bool, actor: str, source: str) -> PruneResult:
        backups = self.catalog.list(target=name)
        # "Verified" for retention means restorable today: a backup whose copies were found corrupt
        # or missing since must not count towards RETENTION_MIN_VERIFIED, nor fill a bucket.
        candidates = []
        for b in backups:
            intact = frozenset(c.destination for c in b.copies if c.status == "stored")
            candidates.append(retention.Candidate(b.id, b.created_at, b.verified and bool(intact), b.tags,
                                                  restorable=bool(intact), destinations=intact))
        decision = retention.select(candidates, self.settings.retention, self.settings.tz, self.clock())
        held = {i: "in use by a restore" for i in self.catalog.in_use()}  # being read, or waiting to be
        # Found again by a rescan: what made it worth keeping (say, the newest verified ones) was
        # lost with the catalog, so it stays until a verify has vouched for it again, unless a
        # copy was found corrupt or missing (a verify that could not read it proves nothing).
        held.update({b.id: "recorded by rescan, not verified since" for b in backups
                     if RESCANNED_TAG in b.tags and b.verify_status != "ok"
                     and not any(c.status in ("corrupt", "missing") for c in b.copies)})
        if held.keys() & set(decision.delete):
            keep = dict(decision.keep)
            for backup_id in held.keys() & set(decision.delete):
                keep[backup_id] = [held[backup_id]]
            decision = retention.Decision(keep=keep, delete=[i for i in decision.delete if i not in held])
        result = PruneResult(name, decision, dry_run=dry_run)
        by_id = {b.id: b for b in backups}
        by_name = {s.name: s for s in self.storages}
        if dry_run:  # the preview names what the real prune would refuse, too
            for backup_id in decision.delete:
                problem = _undeletable(by_id[backup_id], by_name)
                if problem:
                    result.errors[backup_id] = problem
            return result
        if not decision.delete:
            return result
        run_id = self.catalog.start_run("prune", name, actor, source, {"delete": decision.delete})
        for backup_id in decision.delete:
            backup = by_id[backup_id]
            problem = _undeletable(backup, by_name)  # all checked before anything goes
            if problem:
                result.errors[backup_id] = problem
                continue
            failures, gone = [], 0
            for copy in backup.copies:
                if copy.status in ("failed", "deleted"):
                    continue
                try:
                    for key in {backup.object_key, *backup.manifest.get("files", {}).values()}:
                        by_name[copy.destination].delete(key)
                except BackupbotError as exc:
                    failures.append(f"{copy.destination}: {exc.message}")
                    continue
                # Recorded copy by copy: when another destination fails, the catalog still says
                # which copies are gone and which remain.
                self.catalog.set_copy_status(backup_id, copy.destination, "deleted")
                gone += 1
            if failures:
                result.errors[backup_id] = "; ".join(failures) + (
                    f" ({gone} other cop{'y was' if gone == 1 else 'ies were'} deleted)" if gone else "; nothing was deleted")
            else:
                self.catalog.mark_deleted(backup_id)
                result.deleted.append(backup_id)
        self.catalog.finish_run(run_id, "failed" if result.errors else "ok",
                                error="; ".join(f"{k}: {v}" for k, v in result.errors.items()) or None,
                                details={"deleted": result.deleted})
        self.catalog.audit("prune", actor=actor, source=source, target=name,
                           details={"deleted": result.deleted, "errors": result.errors})
        if result.errors:
            self.emit("prune.failed", target=name, error="; ".join(result.errors.values()))
        return result

    def rescan(self, *, dry_run: bool, actor: str, source: str) -> RescanResult:
        """Record the complete backups the destinations hold and the catalog lacks (bot.core.rescan)."""
        result = rescan(self.catalog, self.storages, dry_run=dry_run, targets=set(self.settings.targets))
        if not dry_run:
            self.catalog.audit("rescan", actor=actor, source=source, details={
                "adopted": [a.backup_id for a in result.adopted],
                "copies_added": [f"{i} ({d})" for i, d in result.copies_added],
                "incomplete": [f"{d}: {k}" for d, k in result.incomplete],
                "problems": [f"{d}: {p}" for d, p in result.problems]})
        return result

    def storage_usage(self) -> dict[str, dict[str, int | None]]:
        usage: dict[str, dict[str, int | None]] = {}
        for s in self.storages:
            try:
                usage[s.describe()] = {"used": s.used_bytes(), "free": s.free_bytes()}
            except BackupbotError as exc:
                log.warning("cannot measure %s: %s", s.describe(), exc.message)
                usage[s.describe()] = {"used": None, "free": None}
        return usage


def _undeletable(backup: Backup, by_name: dict[str, Storage]) -> str | None:
    """Why retention must not delete this backup now (nothing of it is deleted then), or None:
    a copy on a destination that is no longer configured would be left behind while the catalog
    said it was gone; one whose destination now looks elsewhere would be looked for in the wrong
    place."""
    unknown = sorted({c.destination for c in backup.copies
                      if c.status not in ("failed", "deleted") and c.destination not in by_name})
    if unknown:
        return (f"its {' and '.join(unknown)} copy would be left behind: no destination of that name is configured "
                "now; configure it again (S3_BUCKET …) and prune, so the policy deletes it; nothing was deleted")
    for c in backup.copies:
        if c.status not in ("failed", "deleted"):
            moved = moved_from(backup, by_name[c.destination])
            if moved:
                return moved + "; nothing was deleted"
    return None


def build_services(settings: Settings) -> Services:
    services = Services(settings)
    services.catalog.mark_orphaned_runs()
    services.settle_interrupted_backups()
    from bot.core.storage.local import remove_stale_partials

    if Path(settings.backup_dir).exists():
        remove_stale_partials(Path(settings.backup_dir))
    remove_stale_temp_files(settings.restore_temp_dir)
    return services


def remove_stale_temp_files(temp_dir: Path | None = None, max_age_s: float = 6 * 3600) -> list[Path]:
    """A restore killed mid-way can leave its uncompressed archive (cleartext data) or its
    list file in $TMPDIR (or RESTORE_TEMP_DIR); remove ours once they are clearly not in use any
    more: old, and (archives) not locked by a restore that is still reading them."""
    removed = []
    cutoff = time.time() - max_age_s
    dirs = dict.fromkeys([Path(tempfile.gettempdir()), *([temp_dir] if temp_dir else [])])
    for path in (p for d in dirs for p in d.glob("backupbot-*")):
        try:
            if not (path.is_file() and path.suffix in (".dump", ".list") and path.stat().st_mtime < cutoff):
                continue
            with open(path, "rb") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a running restore holds it (restore.Spool)
                path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed
