"""What `/backup status` and `backupbot status` report, gathered once for both front ends: per
target the last good backup and its age, the database's size now and its trend, plus the retention
policy, storage used per destination, the next scheduled run, open alerts and any extra sections
other features register in ``STATUS_SECTIONS``. Nothing here knows about Slack."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from bot.config import Settings, parse_duration
from bot.core.alerts import Alert, Alerts
from bot.core.catalog import Catalog, iso, utcnow
from bot.core.inspect import database_size
from bot.core.redact import redact
from bot.errors import BackupbotError

log = logging.getLogger(__name__)

TREND_SAMPLES = 10  # backups whose manifests give the size trend
DEFAULT_MAX_AGE = "26h"  # same default as the health check: a daily backup plus slack


class StatusSource(Protocol):
    """The part of bot.services.Services this module reads (bot.core never imports services)."""

    settings: Settings
    catalog: Catalog

    def running(self, target: str) -> dict[str, Any] | None: ...

    def storage_usage(self) -> dict[str, dict[str, int | None]]: ...


@dataclass(frozen=True)
class SizePoint:
    at: datetime
    size_bytes: int


@dataclass
class TargetStatus:
    name: str
    last_good_id: str | None = None
    last_good_at: datetime | None = None
    age_s: float | None = None
    stale: bool = True
    last_good_size: int | None = None
    last_good_verified: str | None = None
    running: dict[str, Any] | None = None
    database_size_bytes: int | None = None
    database_size_error: str | None = None
    trend: list[SizePoint] = field(default_factory=list)  # oldest first

    def size_change(self, now: datetime | None = None) -> tuple[int, float | None, timedelta] | None:
        """(bytes, percent, over how long) from the oldest sample to now (or the newest sample)."""
        if not self.trend:
            return None
        first = self.trend[0]
        latest = self.database_size_bytes if self.database_size_bytes is not None else self.trend[-1].size_bytes
        if len(self.trend) < 2 and self.database_size_bytes is None:
            return None
        delta = latest - first.size_bytes
        pct = (100.0 * delta / first.size_bytes) if first.size_bytes else None
        return delta, pct, (now or utcnow()) - first.at


@dataclass
class StatusSection:
    """An extra block of the report, contributed by another feature (monitoring, schedules…)."""

    title: str
    lines: list[str]
    ok: bool = True
    data: dict[str, Any] = field(default_factory=dict)


# Other features append callables here: f(source, now) -> StatusSection | None. A section that
# raises is shown as "could not gather" instead of breaking the whole report.
SectionFn = Callable[[Any, datetime], "StatusSection | None"]
STATUS_SECTIONS: list[SectionFn] = []


@dataclass
class StatusReport:
    generated_at: datetime
    targets: list[TargetStatus]
    next_run: str | None
    retention: dict[str, int]
    storage: dict[str, dict[str, int | None]]
    alerts: list[Alert]
    sections: list[StatusSection]

    @property
    def ok(self) -> bool:
        # a database that cannot be reached now is one the next backup will fail on
        return (not self.alerts and all(not t.stale and t.database_size_error is None for t in self.targets)
                and all(s.ok for s in self.sections))

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "generated_at": iso(self.generated_at),
            "next_scheduled_run": self.next_run,
            "targets": [_target_json(t) for t in self.targets],
            "retention": self.retention,
            "storage": self.storage,
            "open_alerts": [{"id": a.id, "kind": a.kind, "target": a.target, "message": a.message,
                             "opened_at": iso(a.opened_at), "count": a.count} for a in self.alerts],
            "sections": [asdict(s) for s in self.sections],
        }


def _target_json(t: TargetStatus) -> dict[str, Any]:
    change = t.size_change()
    return {
        "name": t.name,
        "last_good_backup": {"id": t.last_good_id, "created_at": iso(t.last_good_at), "age_s": int(t.age_s or 0),
                             "size_bytes": t.last_good_size, "verify_status": t.last_good_verified}
        if t.last_good_id else None,
        "stale": t.stale,
        "running": t.running,
        "database_size_bytes": t.database_size_bytes,
        "database_size_error": t.database_size_error,
        "size_trend": [{"at": iso(p.at), "size_bytes": p.size_bytes} for p in t.trend],
        "size_change_bytes": change[0] if change else None,
    }


def gather_status(source: StatusSource, *, next_run: Callable[[], str | None] | str | None = None,
                  target: str | None = None, check_database: bool = True, now: datetime | None = None,
                  sections: list[SectionFn] | None = None) -> StatusReport:
    """Collect the report. Slow or failing parts (database size, extra sections) are reported in
    the result, never raised: a status request must answer even when the database is down."""
    now = now or utcnow()
    settings = source.settings
    names = [settings.target(target).name] if target else list(settings.targets)
    max_age = parse_duration(settings.extra.get("MAX_BACKUP_AGE") or DEFAULT_MAX_AGE, "MAX_BACKUP_AGE")
    targets = [_target_status(source, name, now, max_age, check_database) for name in names]
    extra = []
    for fn in STATUS_SECTIONS if sections is None else sections:
        try:
            section = fn(source, now)
        except Exception as exc:  # one broken contributor must not hide the rest of the report
            log.warning("status section %s failed: %s", getattr(fn, "__name__", fn), redact(exc))
            section = StatusSection(getattr(fn, "__name__", "section"), [f"could not gather: {redact(exc)}"], ok=False)
        if section is not None:
            extra.append(section)
    open_alerts = Alerts(source.catalog).open_alerts()
    if target:
        open_alerts = [a for a in open_alerts if a.target in (None, target)]
    r = settings.retention
    return StatusReport(
        generated_at=now,
        targets=targets,
        next_run=_next_run(next_run),
        retention={"hourly": r.hourly, "daily": r.daily, "weekly": r.weekly, "monthly": r.monthly, "min_verified": r.min_verified},
        storage=_storage(source),
        alerts=open_alerts,
        sections=extra,
    )


def _next_run(next_run: Callable[[], str | None] | str | None) -> str | None:
    if callable(next_run):
        try:
            return next_run()
        except Exception as exc:  # the scheduler's problem is reported by the scheduler
            log.warning("cannot ask the scheduler for the next run: %s", redact(exc))
            return None
    return next_run


def _storage(source: StatusSource) -> dict[str, dict[str, int | None]]:
    try:
        return source.storage_usage()
    except BackupbotError as exc:
        log.warning("cannot measure storage: %s", exc.message)
        return {}


def _target_status(source: StatusSource, name: str, now: datetime, max_age: timedelta,
                   check_database: bool) -> TargetStatus:
    status = TargetStatus(name=name, running=source.running(name))
    backups = source.catalog.list(target=name, limit=TREND_SAMPLES)  # the size trend
    last = source.catalog.latest_good(name, now)  # what the dead-man's switch calls good, too
    if last is not None:
        status.last_good_id, status.last_good_at = last.id, last.created_at
        status.age_s = max(0.0, (now - last.created_at).total_seconds())  # within the clock skew tolerated
        status.stale = status.age_s > max_age.total_seconds()
        status.last_good_size, status.last_good_verified = last.size_bytes, last.verify_status
    status.trend = [SizePoint(b.created_at, int(b.manifest["database_size_bytes"]))
                    for b in reversed(backups) if isinstance(b.manifest.get("database_size_bytes"), int)]
    if check_database:
        try:
            status.database_size_bytes = database_size(source.settings.targets[name].database_url)
        except Exception as exc:  # a down database is exactly when status must still answer
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            status.database_size_error = redact(first_line)[:300]
    return status
