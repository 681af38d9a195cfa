"""Which backups to keep: grandfather-father-son retention (keep-daily/weekly/monthly), pure.

The caller passes only *complete* backups; failed or partial runs never reach this module (they
are not restore points, so they must neither fill a bucket nor count towards ``min_verified``).
Complete backups with no intact copy left (every copy found corrupt or missing since,
``restorable=False``) give way: in each day, week, month or hour the newest *restorable* backup is
kept, and the broken one only when none of that period is restorable (a copy can be marked
wrongly, so nothing is deleted for its mark alone, only when a good backup replaces it).

Rules, applied to the candidates sorted newest first (ties broken by id, so the result is
deterministic whatever the input order):

* Buckets are days, ISO weeks and months *in the configured time zone* — the calendar the user
  sees — so a backup at 00:30 Berlin time belongs to that Berlin day even though it is still the
  previous day in UTC, and DST changes do not shift bucket edges.
* Within the last ``policy.hourly`` hours, the newest backup of each hour is kept (reason
  ``"hourly 2026-11-30 10:00 CET"``): a time window, not a count of hours that have backups, so a
  sub-daily schedule (every 15 minutes) keeps a day of intraday restore points while a nightly
  one is unaffected. The hour carries its zone, so the hour repeated when clocks go back is two.
* For each of the newest ``policy.daily`` distinct days that have backups, the newest backup of
  that day is kept (reason ``"daily 2026-11-29"``); likewise ``policy.weekly`` ISO weeks
  (``"weekly 2026-W48"``, using the ISO year, so 2027-01-03 is ``2026-W53``) and
  ``policy.monthly`` months (``"monthly 2026-11"``).
* The newest restorable backup not in the future (the newest one, when none is restorable) is
  always kept (``"newest"``), even with an all-zero policy; and so is the newest one with an intact copy on each destination
  (``"newest on s3"``), so that while uploads to one destination keep failing, the buckets
  filling up with backups that lack it never delete its last copy.
* Backups created after ``now`` (clock skew between hosts) are kept (``"future"``) and stay out of
  the buckets, so a skewed clock cannot push genuine days out of the window.
* Backups tagged ``"pre-restore"`` are kept for 7 days after creation whatever the buckets say
  (``"pre-restore"``); afterwards they are ordinary backups. They take part in the buckets all
  along, so once their protection lapses nothing changes abruptly.
* If the kept set holds fewer than ``policy.min_verified`` verified backups, the newest verified
  ones not yet kept are added until it does (``"min-verified"``), so an unverified streak of
  recent backups never deletes the last good restore points.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from bot.config import RetentionPolicy

PRE_RESTORE_TAG = "pre-restore"
PRE_RESTORE_GRACE = timedelta(days=7)

# Reasons are listed in this order whatever order the rules fired in, so output is stable.
_REASON_ORDER = ("newest", "future", "hourly", "daily", "weekly", "monthly", "pre-restore", "min-verified")
# "newest on <destination>" ranks with "newest".


@dataclass(frozen=True)
class Candidate:
    """One complete backup, as the catalog knows it."""

    id: str
    created_at: datetime  # aware, UTC
    verified: bool  # the last verification succeeded
    tags: frozenset[str] = frozenset()
    restorable: bool = True  # False: no intact copy is left (all found corrupt or missing)
    destinations: frozenset[str] = frozenset()  # where it has an intact copy


@dataclass(frozen=True)
class Decision:
    """``keep`` maps id -> reasons, newest first; ``delete`` lists ids oldest first."""

    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)


def hour_label(when: datetime, tz: ZoneInfo) -> str:
    local = when.astimezone(tz)
    return f"{local:%Y-%m-%d %H}:00 {local:%Z}"


def day_key(local: date) -> str:
    return local.isoformat()


def week_key(local: date) -> str:
    iso = local.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def month_key(local: date) -> str:
    return f"{local.year}-{local.month:02d}"


def _check(candidates: Sequence[Candidate], policy: RetentionPolicy, now: datetime) -> None:
    # Naive datetimes would silently be read in the host's zone; refuse them instead.
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    seen: set[str] = set()
    for c in candidates:
        if c.created_at.tzinfo is None or c.created_at.utcoffset() is None:
            raise ValueError(f"backup {c.id}: created_at must be an aware datetime")
        if c.id in seen:
            raise ValueError(f"backup {c.id} appears twice")
        seen.add(c.id)
    for name in ("hourly", "daily", "weekly", "monthly", "min_verified"):
        if getattr(policy, name) < 0:
            raise ValueError(f"retention {name} must not be negative")


def _buckets(ordered: Sequence[Candidate], count: int, label_of: Callable[[Candidate], str]) -> dict[str, str]:
    """id -> bucket label for the newest ``count`` buckets that have backups: in each, its newest
    restorable backup, or its newest backup when none of them is (a copy marked corrupt or missing
    may be marked wrongly: it is never deleted for that alone, only when a good one replaces it)."""
    groups: dict[str, list[Candidate]] = {}
    for c in ordered:  # newest first, so buckets are met newest first too
        groups.setdefault(label_of(c), []).append(c)
    chosen: dict[str, str] = {}
    for label, members in itertools.islice(groups.items(), count):
        chosen[next((c for c in members if c.restorable), members[0]).id] = label
    return chosen


def select(
    candidates: Sequence[Candidate], policy: RetentionPolicy, tz: ZoneInfo, now: datetime
) -> Decision:
    """Decide which backups to keep and which to delete; see the module docstring for the rules."""
    _check(candidates, policy, now)
    newest_first = sorted(candidates, key=lambda c: (c.created_at, c.id), reverse=True)
    reasons: dict[str, list[str]] = {}

    def keep(c: Candidate, reason: str) -> None:
        reasons.setdefault(c.id, []).append(reason)

    for c in newest_first:
        if c.created_at > now:
            keep(c, "future")
    past = [c for c in newest_first if c.created_at <= now]
    good = [c for c in past if c.restorable]
    if past:
        keep(good[0] if good else past[0], "newest")
    for destination in sorted({d for c in good for d in c.destinations}):
        last = next(c for c in good if destination in c.destinations)
        if last is not good[0]:
            keep(last, f"newest on {destination}")
    if policy.hourly:
        window = [c for c in past if now - c.created_at < timedelta(hours=policy.hourly)]
        for cid, label in _buckets(window, len(window), lambda c: hour_label(c.created_at, tz)).items():
            reasons.setdefault(cid, []).append(f"hourly {label}")
    for prefix, count, key in (
        ("daily", policy.daily, day_key),
        ("weekly", policy.weekly, week_key),
        ("monthly", policy.monthly, month_key),
    ):
        def label_of(c: Candidate, key: Callable[[date], str] = key) -> str:
            return key(c.created_at.astimezone(tz).date())

        for cid, label in _buckets(past, count, label_of).items():
            reasons.setdefault(cid, []).append(f"{prefix} {label}")
    for c in past:
        if PRE_RESTORE_TAG in c.tags and now - c.created_at < PRE_RESTORE_GRACE:
            keep(c, "pre-restore")

    # Future backups (a skewed clock) do not count: the real restore points must reach the minimum.
    verified_kept = sum(1 for c in good if c.verified and c.id in reasons)
    for c in good:
        if verified_kept >= policy.min_verified:
            break
        if c.verified and c.id not in reasons:
            keep(c, "min-verified")
            verified_kept += 1

    def rank(reason: str) -> int:
        return _REASON_ORDER.index(reason.split(" ", 1)[0])

    return Decision(
        keep={c.id: sorted(reasons[c.id], key=rank) for c in newest_first if c.id in reasons},
        delete=[c.id for c in reversed(newest_first) if c.id not in reasons],
    )
