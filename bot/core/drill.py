"""The restore drill: restore the newest good backup into a scratch database, check it against the
backup's manifest (the restore's verification report), record how long it took (the RTO we can
promise), and drop the scratch database again, whatever happened.

Monthly on DRILL_SCHEDULE, and on demand (`/backup drill`, `backupbot drill`). Each drill is a run
of kind ``drill`` in the catalog with ``rto_s``; the restore itself is its own ``restore`` run.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from bot.core.catalog import Backup, parse_iso
from bot.core.monitoring import Alarms
from bot.core.pgtools import ConnInfo
from bot.core.restore import RestoreRequest, drop_database
from bot.errors import BackupbotError, Refused
from bot.services import Services

log = logging.getLogger(__name__)
ALERT_REPEAT = timedelta(days=1)
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@dataclass
class DrillResult:
    target: str
    ok: bool
    backup: Backup | None = None
    rto_s: float | None = None
    scratch: str | None = None  # host:port/dbname, no password
    dropped: bool = False
    report_lines: list[str] = field(default_factory=list)
    error: str | None = None
    run_id: int | None = None

    def summary(self) -> str:
        from bot.render.common import human_duration

        if self.ok:
            return (f"🧪 Restore drill of {self.target}: backup {self.backup.id if self.backup else '?'} restored and "
                    f"verified in {human_duration(self.rto_s)} (RTO) ✓")
        return f"⚠ Restore drill of {self.target} failed: {self.error or 'verification found differences'}"


@dataclass
class LastDrill:
    ok: bool
    at: datetime
    rto_s: float | None
    backup_id: str | None
    error: str | None


def scratch_name(target: str, now: datetime) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", target)[:30]
    return f"drill_{base}_{now:%Y%m%d_%H%M%S}"


def database_exists(url: str) -> bool:
    info = ConnInfo.parse(url)
    with psycopg.connect(info.with_db("postgres").conninfo(), autocommit=True, connect_timeout=10) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [info.dbname]).fetchone() is not None


def run_drill(services: Services, target: str | None = None, *, actor: str = "backupbot",
              source: str = "schedule", alarms: Alarms | None = None) -> DrillResult:
    """Run one drill of a target (default: the default target). One drill per target at a time."""
    name = services.settings.target(target).name
    with _locks_guard:
        lock = _locks.setdefault(name, threading.Lock())
    if not lock.acquire(blocking=False):
        raise Refused(f"a restore drill of {name} is already running")
    try:
        result = _drill(services, name, actor=actor, source=source)
    finally:
        lock.release()
    if alarms is not None:
        now = services.clock()
        if result.ok:
            alarms.clear("drill", name, now=now)
        else:
            alarms.fire("drill", name, result.summary().removeprefix("⚠ "), now=now, every=ALERT_REPEAT,
                        detail="\n".join(result.report_lines[-20:]),
                        hint="A backup we cannot restore is not a backup: look at the report, fix, and "
                             "run `/backup drill` again.")
    return result


def _drill(services: Services, name: str, *, actor: str, source: str) -> DrillResult:
    backup = services.catalog.latest_good(name)
    run_id = services.catalog.start_run("drill", name, actor, source, {"backup_id": backup.id if backup else None})
    if backup is None:
        result = DrillResult(name, False, error=f"there is no backup of {name} to restore", run_id=run_id)
        services.catalog.finish_run(run_id, "failed", error=result.error)
        return result
    req = RestoreRequest(backup.id, mode="into", into=scratch_name(name, services.clock()), target=name)
    result = DrillResult(name, False, backup=backup, run_id=run_id)
    restored: str | None = None
    try:
        dest_url, _t = services.restore_destination(req, backup)
        result.scratch = ConnInfo.parse(dest_url).describe()
        outcome, _safety = services.restore(req, actor=actor, source=source, safety_backup=False)
        restored = dest_url
        result.ok = outcome.report.ok
        result.rto_s = outcome.duration_s
        result.report_lines = outcome.report.lines()
        if not result.ok:
            result.error = f"the restored database differs from the backup's manifest ({len(outcome.report.failures)} check(s))"
    except BackupbotError as exc:
        # Nothing of ours is left: restore() removes a database it created when it fails, and a
        # name that already existed (another drill's) is never ours to drop.
        result.error = exc.message
    except BaseException:
        services.catalog.finish_run(run_id, "failed", backup_id=backup.id, error="interrupted")
        raise
    finally:
        result.dropped = _drop(restored) if restored else True
    if not result.dropped:
        result.ok = False
        result.error = (result.error + "; " if result.error else "") + f"the scratch database {result.scratch} could not be dropped"
    details = {"backup_id": backup.id, "scratch": result.scratch, "dropped": result.dropped,
               "report": result.report_lines[:200]}
    services.catalog.finish_run(run_id, "ok" if result.ok else "failed", backup_id=backup.id, rto_s=result.rto_s,
                                error=result.error, details=details)
    services.catalog.audit("drill", actor=actor, source=source, target=name, backup_id=backup.id,
                           details={"ok": result.ok, "rto_s": result.rto_s, "dropped": result.dropped})
    return result


def _drop(dest_url: str) -> bool:
    """Drop the scratch database; True once it is gone (it may never have been created)."""
    try:
        drop_database(dest_url)
        return not database_exists(dest_url)
    except Exception:  # the server went away: report, do not hide the drill's own outcome
        log.exception("could not drop the drill's scratch database")
        return False


def last_drill(services: Services, target: str | None = None) -> LastDrill | None:
    for run in services.catalog.runs(kind="drill", target=target, limit=5):
        if run["status"] not in ("ok", "failed"):
            continue
        at = parse_iso(run["finished_at"] or run["started_at"])
        assert at is not None
        details: dict[str, Any] = json.loads(run["details"] or "{}")
        return LastDrill(run["status"] == "ok", at, run["rto_s"], details.get("backup_id") or run["backup_id"],
                         run["error"])
    return None
