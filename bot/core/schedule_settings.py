"""Settings for schedules, the checklist, monitoring and Supabase platform backups.

Read from the raw configuration values (``Settings.extra``: .env merged with the environment)
and an optional checklist file, validated once into a frozen object. A bad value is one line,
``invalid configuration: <what> (<VARIABLE>)``. Values in the environment win over the file.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bot.config import Settings, parse_duration
from bot.core import checklist
from bot.core.checklist import Item
from bot.core.cron import CrontabTrigger, cron_trigger
from bot.core.heartbeat import check_http_url, heartbeat_url
from bot.core.redact import register_secret
from bot.errors import ConfigError

SUPABASE_API_DEFAULT = "https://api.supabase.com"
OFF = ("off", "none", "disabled")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@dataclass(frozen=True)
class DiskThreshold:
    """Minimum free space for the local backup directory: bytes, or a percentage of the disk."""

    min_bytes: int | None = None
    min_percent: float | None = None

    def breached(self, free: int, total: int) -> bool:
        if self.min_bytes is not None:
            return free < self.min_bytes
        if self.min_percent is not None and total > 0:
            return free * 100 / total < self.min_percent
        return False

    def describe(self) -> str:
        from bot.render.common import human_bytes

        if self.min_bytes is not None:
            return human_bytes(self.min_bytes)
        return f"{self.min_percent:g}%" if self.min_percent is not None else "off"


@dataclass(frozen=True)
class SupabaseApi:
    project_ref: str
    access_token: str = field(repr=False)
    api_url: str = SUPABASE_API_DEFAULT


@dataclass(frozen=True)
class ScheduleSettings:
    timezone: str = "UTC"
    checklist_time: time | None = time(9, 0)  # None: no daily checklist post
    checklist_deadline: time | None = time(17, 0)  # None: no reminder
    checklist_owners: tuple[str, ...] = ()
    checklist_file: Path | None = None
    checklist_weekday: int = 0  # date.weekday(): 0 = Monday
    checklist_monthday: int = 1
    items: tuple[Item, ...] = checklist.DEFAULT_ITEMS
    max_backup_age: timedelta = timedelta(hours=26)
    stale_alert_repeat: timedelta = timedelta(hours=6)
    growth_alert_percent: float = 20.0
    disk_free_min: DiskThreshold = DiskThreshold(min_percent=10.0)
    integrity_schedule: str | None = "0 4 * * 0"
    monitor_schedule: str | None = "0 6 * * *"
    drill_schedule: str | None = "0 5 1 * *"
    supabase: SupabaseApi | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def trigger(self, expr: str) -> CrontabTrigger:
        return cron_trigger(expr, self.tz)

    @classmethod
    def from_settings(cls, settings: Settings) -> ScheduleSettings:
        """Validate everything this feature reads, including each target's backup schedule."""
        sched = cls.from_env(settings.extra, timezone=settings.timezone)
        for t in settings.targets.values():
            where = "BACKUP_SCHEDULE" if len(settings.targets) == 1 else f"schedule of target {t.name}"
            _cron(t.schedule, where, settings.timezone)
        return sched

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, timezone: str = "UTC") -> ScheduleSettings:
        def get(key: str) -> str | None:
            value = env.get(key)
            return value.strip() if value is not None and value.strip() != "" else None

        path = get("CHECKLIST_FILE")
        file_data = _read_checklist_file(Path(path).expanduser()) if path else {}

        def setting(key: str, file_key: str) -> tuple[str | None, str]:
            """The raw value and where it came from (for the error message)."""
            if get(key) is not None:
                return get(key), key
            value = file_data.get(file_key)
            if isinstance(value, time):  # TOML's unquoted local time: time = 08:30
                value = value.strftime("%H:%M")
            return (str(value) if value is not None else None), f"{path} {file_key}"

        raw_time, where_time = setting("CHECKLIST_TIME", "time")
        raw_deadline, where_deadline = setting("CHECKLIST_DEADLINE", "deadline")
        raw_weekday, where_weekday = setting("CHECKLIST_WEEKDAY", "weekday")
        raw_monthday, where_monthday = setting("CHECKLIST_MONTHDAY", "monthday")

        owners = tuple(x.strip() for x in (get("CHECKLIST_OWNERS") or "").split(",") if x.strip())
        for owner in owners:
            if not re.fullmatch(r"[UWS][A-Z0-9]{2,}", owner):
                raise ConfigError(f"{owner!r} is not a Slack user id (U…) or user group id (S…)", "CHECKLIST_OWNERS")

        supabase = None
        token, ref = get("SUPABASE_ACCESS_TOKEN"), get("SUPABASE_PROJECT_REF")
        if bool(token) != bool(ref):
            missing = "SUPABASE_PROJECT_REF" if token else "SUPABASE_ACCESS_TOKEN"
            raise ConfigError("set both SUPABASE_ACCESS_TOKEN and SUPABASE_PROJECT_REF, or neither", missing)
        if token and ref:
            register_secret(token)
            if not re.fullmatch(r"[a-z0-9]{6,40}", ref):
                raise ConfigError(f"{ref!r} is not a project ref (the id in db.<ref>.supabase.co)",
                                  "SUPABASE_PROJECT_REF")
            api_url = get("SUPABASE_API_URL") or SUPABASE_API_DEFAULT
            check_http_url(api_url, "SUPABASE_API_URL")
            supabase = SupabaseApi(ref, token, api_url.rstrip("/"))

        overrides = checklist.parse_items(file_data, str(path)) if path else {}
        heartbeat_url(env)  # validated here (`run` refuses a bad one); read by services when pinging

        return cls(
            timezone=timezone,
            checklist_time=_clock_time(raw_time, where_time, time(9, 0)),
            checklist_deadline=_clock_time(raw_deadline, where_deadline, time(17, 0)),
            checklist_owners=owners,
            checklist_file=Path(path).expanduser() if path else None,
            checklist_weekday=checklist.parse_weekday(raw_weekday, where_weekday) if raw_weekday else 0,
            checklist_monthday=_monthday(raw_monthday, where_monthday),
            items=checklist.merge_items(overrides, supabase=supabase is not None),
            max_backup_age=_positive(get("MAX_BACKUP_AGE") or "26h", "MAX_BACKUP_AGE"),
            stale_alert_repeat=_positive(get("STALE_ALERT_REPEAT") or "6h", "STALE_ALERT_REPEAT"),
            growth_alert_percent=_percent(get("DB_GROWTH_ALERT_PERCENT") or "20", "DB_GROWTH_ALERT_PERCENT"),
            disk_free_min=parse_disk_threshold(get("DISK_FREE_MIN") or "10%", "DISK_FREE_MIN"),
            integrity_schedule=_optional_cron(get("INTEGRITY_SCHEDULE"), "0 4 * * 0", "INTEGRITY_SCHEDULE", timezone),
            monitor_schedule=_optional_cron(get("MONITOR_SCHEDULE"), "0 6 * * *", "MONITOR_SCHEDULE", timezone),
            drill_schedule=_optional_cron(get("DRILL_SCHEDULE"), "0 5 1 * *", "DRILL_SCHEDULE", timezone),
            supabase=supabase,
        )


def _read_checklist_file(path: Path) -> dict[str, Any]:
    where = f"CHECKLIST_FILE={path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the checklist file: {exc.strerror or exc}", where) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}", where) from None
    if not isinstance(data, dict):
        raise ConfigError("must hold a table/object with daily, weekly and monthly lists", where)
    unknown = set(data) - {"daily", "weekly", "monthly", "time", "deadline", "weekday", "monthday"}
    if unknown:
        raise ConfigError(f"unknown keys: {', '.join(sorted(unknown))}", where)
    return data


def _clock_time(raw: str | None, where: str, default: time) -> time | None:
    if raw is None:
        return default
    if raw.lower() in OFF:
        return None
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", raw)
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ConfigError(f"{raw!r} is not a time like 09:00 (24-hour, or off)", where)
    return time(int(m[1]), int(m[2]))


def _monthday(raw: str | None, where: str) -> int:
    if raw is None:
        return 1
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 31:
        raise ConfigError(f"{raw!r} is not a day of month 1-31 (days past a month's end mean its last day)", where)
    return int(raw)


def _positive(raw: str, where: str) -> timedelta:
    value = parse_duration(raw, where)
    if value <= timedelta(0):
        raise ConfigError(f"{raw!r} must be longer than zero", where)
    return value


def _percent(raw: str, where: str) -> float:
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise ConfigError(f"{raw!r} is not a percentage like 20", where) from None
    if value <= 0:
        raise ConfigError(f"{raw!r} must be more than 0", where)
    return value


def parse_disk_threshold(raw: str, where: str) -> DiskThreshold:
    """'10%' of the disk, or an absolute size: '5GB', '500MB', '1.5TiB' (1024-based); '0' is off."""
    text = raw.strip()
    if text.endswith("%"):
        pct = _percent(text, where)
        if pct >= 100:
            raise ConfigError(f"{raw!r} must be under 100%", where)
        return DiskThreshold(min_percent=pct)
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"{raw!r} is not a size like 5GB or a percentage like 10%", where)
    unit = m[2].upper()[:1] if m[2] else ""
    return DiskThreshold(min_bytes=int(float(m[1]) * _UNITS[unit]))


def _cron(expr: str, where: str, timezone: str) -> str:
    try:
        cron_trigger(expr, timezone)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{expr!r} is not a cron expression: {exc}", where) from None
    return expr


def _optional_cron(raw: str | None, default: str, where: str, timezone: str) -> str | None:
    if raw is not None and raw.lower() in OFF:
        return None
    return _cron(raw or default, where, timezone)
