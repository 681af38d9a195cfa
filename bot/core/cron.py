"""Cron expressions as the crontab(5) manual means them, on top of APScheduler 3.x's CronTrigger.

Two differences from a plain ``CronTrigger.from_crontab`` matter for a backup schedule:

- Day of week: crontab counts 0 (or 7) = Sunday, 1 = Monday; APScheduler 3.x counts 0 = Monday.
  ``0 4 * * 0`` would silently run on Mondays. We translate the field into day names first.
- Daylight saving time: when clocks go back, APScheduler 3.x fires a fixed-time job twice (once in
  each occurrence of the repeated hour), so ``30 2 * * *`` in Europe/Berlin would take two backups
  on the last Sunday of October. Like cron, a job with a fixed hour runs once, in the first
  occurrence; jobs whose hour field is ``*`` keep firing at their real interval. A time skipped
  when clocks go forward still fires, at the first instant after the gap (02:30 → 03:30).

``previous_fire_time`` answers "when should the last run have happened?" for catch-up after
downtime, which APScheduler does not offer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from apscheduler.triggers.cron import CronTrigger

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 = Sunday

# How far back previous_fire_time looks, widening until a fire time is found: a 15-minute
# schedule needs one step, a monthly one the fourth, a yearly one the last.
_LOOKBACK = (timedelta(hours=2), timedelta(days=2), timedelta(days=9), timedelta(days=63),
             timedelta(days=400))


def _day_value(token: str, expr: str) -> int:
    token = token.strip().lower()
    if token[:3] in _DAY_NAMES and token.isalpha():
        return _DAY_NAMES.index(token[:3])
    if token.isascii() and token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7
    raise ValueError(f"day of week {token!r} in {expr!r} must be 0-7 or sun-sat")


def crontab_days(field: str) -> str:
    """Translate a crontab day-of-week field into APScheduler's terms (day names, no numbers)."""
    if field.strip() in ("*", "?"):
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        part, _slash, step_text = item.partition("/")
        if step_text and not (step_text.isascii() and step_text.isdigit()):
            raise ValueError(f"step in {field!r} must be a whole number")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"step in {field!r} must be at least 1")
        if part in ("*", ""):
            lo, hi = 0, 6
        elif "-" in part:
            a, b = part.split("-", 1)
            lo, hi = _day_value(a, field), _day_value(b, field)
            if b.strip() == "7":
                hi = 7  # "1-7" means Monday through Sunday
            if hi < lo:
                raise ValueError(f"day range {part!r} in {field!r} runs backwards")
        else:
            lo = _day_value(part, field)
            hi = 6 if step_text else lo  # "1/2": from Monday on, every other day
        days.update(d % 7 for d in range(lo, hi + 1, step))
    if len(days) == 7:
        return "*"
    # APScheduler's names are positional from Monday; list them in that order for readability.
    return ",".join(_DAY_NAMES[d] for d in (1, 2, 3, 4, 5, 6, 0) if d in days)


class CrontabTrigger(CronTrigger):
    """A CronTrigger with crontab weekday numbering and one run per day across DST changes."""

    @classmethod
    def from_crontab(cls, expr: str, timezone: Any = None) -> CrontabTrigger:
        values = expr.split()
        if len(values) != 5:
            raise ValueError(f"{expr!r} has {len(values)} fields; a cron expression has 5 "
                             "(minute hour day-of-month month day-of-week)")
        trigger = cls(minute=values[0], hour=values[1], day=values[2], month=values[3],
                      day_of_week=crontab_days(values[4]), timezone=timezone)
        trigger.expression = expr
        return trigger

    expression: str = ""

    def _fixed_hour(self) -> bool:
        hour = next(f for f in self.fields if f.name == "hour")
        return str(hour) not in ("*", "*/1")

    def _second_occurrence(self, when: datetime) -> bool:
        local = when.astimezone(self.timezone)
        return bool(local.fold) and local.replace(fold=0).utcoffset() != local.utcoffset()

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        nxt = super().get_next_fire_time(previous_fire_time, now)
        while nxt is not None and self._fixed_hour() and self._second_occurrence(nxt):
            nxt = super().get_next_fire_time(nxt, nxt)
        # APScheduler may return a wall time inside a spring-forward gap (02:30+01:00); normalise
        # to the real instant so messages show 03:30 CEST.
        return nxt.astimezone(UTC).astimezone(self.timezone) if nxt is not None else None


def cron_trigger(expr: str, tz: tzinfo | str) -> CrontabTrigger:
    """Parse a crontab expression in a time zone; ValueError with a readable message if invalid."""
    return CrontabTrigger.from_crontab(expr.strip(), timezone=tz)


def next_fire_times(trigger: CronTrigger, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times strictly after ``after`` (for tests, docs and the CLI)."""
    out: list[datetime] = []
    prev: datetime | None = None
    now = after + timedelta(microseconds=1)
    while len(out) < count:
        nxt = trigger.get_next_fire_time(prev, now)
        if nxt is None:
            break
        out.append(nxt)
        prev = now = nxt
    return out


def previous_fire_time(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The last fire time at or before ``now`` (None if none within about a year)."""
    for window in _LOOKBACK:
        prev: datetime | None = None
        cursor = now - window
        found: datetime | None = None
        while True:
            nxt = trigger.get_next_fire_time(prev, cursor)
            if nxt is None or nxt > now:
                break
            found = prev = cursor = nxt
        if found is not None:
            return found
    return None
