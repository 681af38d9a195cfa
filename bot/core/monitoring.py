"""Health monitoring: daily metrics (database size, free disk, storage used per destination) kept
in the catalog, the growth and low-disk alerts they feed, and the dead-man's switch that alerts
when a target's newest good backup is too old.

Decisions live here; Slack does not. An alert is an ``Alerts`` row (one open per kind and target)
plus an event, ``services.emit("<kind>.alert", ...)``, emitted when the alert opens and again
whenever ``Alerts.due`` says the repeat interval has passed; ``"<kind>.resolved"`` when it clears.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from bot.core.alerts import Alert, Alerts
from bot.core.catalog import iso, parse_iso, register_migrations
from bot.core.inspect import database_size
from bot.core.redact import redact
from bot.core.schedule_settings import ScheduleSettings
from bot.render.common import human_bytes, human_duration, local_time
from bot.services import Services

log = logging.getLogger(__name__)
DAILY_REPEAT = timedelta(hours=23)  # daily checks repeat an open alert once a day


def _m1(db: sqlite_utils.Database) -> None:
    db.table("metrics_daily").create({
        "target": str, "day": str, "recorded_at": str, "database_size": int, "free_disk_bytes": int,
        "total_disk_bytes": int, "storage_used": str, "error": str,
    }, pk=("target", "day"))


register_migrations("monitoring", [_m1])


class Alarms:
    """Raise / repeat / resolve alerts and tell the listeners (Slack) when they should speak."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.alerts = Alerts(services.catalog)

    def open_alert(self, kind: str, target: str | None) -> Alert | None:
        return next((a for a in self.alerts.open_alerts()
                     if a.kind == kind and (a.target or None) == (target or None)), None)

    def fire(self, kind: str, target: str | None, message: str, *, now: datetime, every: timedelta,
             detail: str = "", hint: str = "") -> bool:
        """Emit the alert when it is new or its repeat is due (``Alerts.due``); otherwise stay
        quiet. Returns whether it was emitted.

        A listener that records alerts itself (commands/alerts.py opens or bumps the row for every
        ``<kind>.alert``) is left to do so; when nobody did (the CLI, core tests) it is recorded
        here, so the alert state is the same either way and counts each notification once."""
        before = self.open_alert(kind, target)
        if before is not None and not self.alerts.due(before, every, now):
            return False
        self.services.emit(f"{kind}.alert", kind=kind, target=target, message=message, detail=detail, hint=hint)
        after = self.open_alert(kind, target)
        if after is None or (before is not None and after.count == before.count):
            after, _new = self.alerts.raise_(kind, target, message, detail=detail, hint=hint, now=now)
        self.alerts.notified(after.id, now=now)
        return True

    def clear(self, kind: str, target: str | None, *, now: datetime) -> bool:
        """Announce the recovery of an open alert and resolve it. Returns whether one was open.

        The event goes out while the alert is still open, so a listener that resolves it itself
        (commands/alerts.py, which then posts the recovery in the alert's thread) finds it."""
        if self.open_alert(kind, target) is None:
            return False
        self.services.emit(f"{kind}.resolved", kind=kind, target=target)
        self.alerts.resolve(kind, target, now)  # a no-op when a listener already resolved it
        return True


@dataclass
class DayMetrics:
    target: str
    day: date
    database_size: int | None
    free_disk_bytes: int | None
    total_disk_bytes: int | None
    storage_used: dict[str, int | None] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> DayMetrics:
        return cls(r["target"], date.fromisoformat(r["day"]), r["database_size"], r["free_disk_bytes"],
                   r["total_disk_bytes"], json.loads(r["storage_used"] or "{}"), r["error"])


@dataclass
class StaleCheck:
    target: str
    age: timedelta | None  # None: never backed up and the catalog is younger than the limit
    stale: bool
    emitted: bool
    resolved: bool


def disk_usage(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the file system holding ``path`` (or its nearest existing parent)."""
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return usage.free, usage.total


def growth_percent(today: int | None, before: int | None) -> float | None:
    if today is None or not before:
        return None
    return (today - before) * 100.0 / before


class Monitor:
    def __init__(self, services: Services, sched: ScheduleSettings,
                 measure_size: Callable[[str], int] = database_size) -> None:
        self.services = services
        self.sched = sched
        self.alarms = Alarms(services)
        self.measure_size = measure_size
        services.catalog.migrate()

    @property
    def catalog(self) -> Any:
        return self.services.catalog

    # -- daily metrics --------------------------------------------------------------------------
    def record(self, now: datetime) -> list[DayMetrics]:
        """Measure every target, store today's row (replacing an earlier one today), then check
        growth and free disk. A database that cannot be reached is recorded with its error."""
        day = now.astimezone(self.sched.tz).date()
        free, total = disk_usage(Path(self.services.settings.backup_dir))
        used = {name: u["used"] for name, u in self.services.storage_usage().items()}
        out = []
        for name, target in self.services.settings.targets.items():
            size, error = None, None
            try:
                size = self.measure_size(target.database_url)
            except Exception as exc:  # a down database is a finding for the report, not a crash
                error = redact(f"{type(exc).__name__}: {exc}")[:500]
                log.warning("cannot measure the size of %s: %s", name, error)
            m = DayMetrics(name, day, size, free, total, used, error)
            with self.catalog.tx() as db:
                db.table("metrics_daily").upsert({
                    "target": name, "day": day.isoformat(), "recorded_at": iso(now), "database_size": size,
                    "free_disk_bytes": free, "total_disk_bytes": total, "storage_used": json.dumps(used),
                    "error": error}, pk=("target", "day"))
            out.append(m)
            self.check_growth(name, now)
        self.check_disk(free, total, now)
        return out

    def metrics(self, target: str, limit: int = 30) -> list[DayMetrics]:
        """Newest first."""
        rows = self.catalog.db.query("SELECT * FROM metrics_daily WHERE target = ? ORDER BY day DESC LIMIT ?",
                                     [target, limit])
        return [DayMetrics.from_row(r) for r in rows]

    def trend(self, target: str) -> tuple[DayMetrics | None, float | None]:
        """The newest day's metrics and its growth over the previous recorded day, in percent."""
        rows = [m for m in self.metrics(target, 2) if m.database_size is not None]
        if not rows:
            return None, None
        return rows[0], growth_percent(rows[0].database_size, rows[1].database_size if len(rows) > 1 else None)

    def check_growth(self, target: str, now: datetime) -> float | None:
        latest, pct = self.trend(target)
        limit = self.sched.growth_alert_percent
        if latest is None or pct is None or latest.day != now.astimezone(self.sched.tz).date():
            return pct
        if pct > limit:
            self.alarms.fire(
                "growth", target, f"{target} grew {pct:.1f}% in a day (now {human_bytes(latest.database_size)})",
                now=now, every=DAILY_REPEAT, detail=f"alert threshold: {limit:g}% day over day",
                hint="A bulk import or a runaway table? Check the largest tables; backups grow with them.")
        else:
            self.alarms.clear("growth", target, now=now)
        return pct

    def check_disk(self, free: int, total: int, now: datetime) -> bool:
        threshold = self.sched.disk_free_min
        where = str(self.services.settings.backup_dir)
        if threshold.breached(free, total):
            pct = free * 100 / total if total else 0
            self.alarms.fire(
                "disk", None, f"only {human_bytes(free)} ({pct:.0f}%) free for local backups in {where}",
                now=now, every=DAILY_REPEAT, detail=f"DISK_FREE_MIN is {threshold.describe()}",
                hint="Free space, lower RETENTION_DAILY, or move BACKUP_DIR to a larger disk.")
            return True
        self.alarms.clear("disk", None, now=now)
        return False

    # -- the dead-man's switch ----------------------------------------------------------------
    def installed_at(self) -> datetime | None:
        row = self.catalog.db.execute(
            "SELECT min(applied_at) FROM schema_migrations WHERE component = 'core'").fetchone()
        return parse_iso(row[0]) if row and row[0] else None

    def check_stale(self, now: datetime, targets: Iterable[str] | None = None) -> list[StaleCheck]:
        """Alert per target whose newest good backup is older than MAX_BACKUP_AGE; repeat every
        STALE_ALERT_REPEAT while it lasts; announce the recovery once a good backup appears."""
        return [self._check_stale(name, now)
                for name in (targets if targets is not None else self.services.settings.targets)]

    def _check_stale(self, name: str, now: datetime) -> StaleCheck:
        latest = self.catalog.latest_good(name, now)
        since = latest.created_at if latest else self.installed_at()
        age = now - since if since else None
        stale = age is not None and age > self.sched.max_backup_age
        emitted = resolved = False
        if stale and age is not None:
            what = (f"no good backup of {name} for {human_duration(age)}" if latest
                    else f"{name} has never been backed up (catalog created {human_duration(age)} ago)")
            emitted = self.alarms.fire(
                "stale", name, what, now=now, every=self.sched.stale_alert_repeat,
                detail=(f"newest good backup: {latest.id} at {iso(latest.created_at)}" if latest else "")
                + f"; limit MAX_BACKUP_AGE={human_duration(self.sched.max_backup_age)}",
                hint="Is the bot running and the schedule right? Check `/backup status` and the last "
                     "backup's error; `/backup now` takes one immediately.")
            # A backup that landed after the read above had its own check (the recovery listener,
            # another thread) find nothing to clear: clear for it, or the alert stays open.
            newest = self.catalog.latest_good(name, now)
            if newest is not None and now - newest.created_at <= self.sched.max_backup_age:
                resolved = self.alarms.clear("stale", name, now=now)
        else:
            resolved = self.alarms.clear("stale", name, now=now)
        return StaleCheck(name, age, stale, emitted, resolved)

    # -- for /backup status --------------------------------------------------------------------
    def status_lines(self, now: datetime) -> list[str]:
        """Metrics for /backup status (staleness is in the status report's own target lines)."""
        tz = self.sched.tz
        lines = []
        for name in self.services.settings.targets:
            latest, pct = self.trend(name)
            if latest is None:
                lines.append(f"{name}: no daily metrics yet (recorded by MONITOR_SCHEDULE)")
                continue
            trend = f", {pct:+.1f}% day over day" if pct is not None else ""
            warn = "⚠ " if pct is not None and pct > self.sched.growth_alert_percent else ""
            lines.append(f"{warn}{name}: database {human_bytes(latest.database_size)}{trend} "
                         f"({latest.day:%a %d %b})")
        free, total = disk_usage(Path(self.services.settings.backup_dir))
        warn = "⚠ " if self.sched.disk_free_min.breached(free, total) else ""
        lines.append(f"{warn}local disk: {human_bytes(free)} free of {human_bytes(total)} "
                     f"(alert under {self.sched.disk_free_min.describe()})")
        rows = list(self.catalog.db.query("SELECT storage_used, recorded_at FROM metrics_daily "
                                          "ORDER BY recorded_at DESC LIMIT 1"))
        if rows:
            used = json.loads(rows[0]["storage_used"] or "{}")
            when = local_time(parse_iso(rows[0]["recorded_at"]), tz, "%a %H:%M")
            lines.append("storage used: " + ", ".join(f"{k} {human_bytes(v)}" for k, v in used.items()) + f" ({when})")
        return lines


def status_section(source: Any, now: datetime) -> Any:
    """bot.core.status STATUS_SECTIONS entry: daily metrics, growth, free disk, storage used."""
    from bot.core.status import StatusSection

    monitor = Monitor(source, ScheduleSettings.from_settings(source.settings))
    lines = monitor.status_lines(now)
    return StatusSection("Monitoring", lines, ok=not any(line.startswith("⚠") for line in lines))


def _register_status_section() -> None:
    from bot.core import status

    if status_section not in status.STATUS_SECTIONS:
        status.STATUS_SECTIONS.append(status_section)


_register_status_section()
