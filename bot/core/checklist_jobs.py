"""The checklist's life in the channel: post the day's checklist with evidence, apply a click
(ticks and un-ticks) and update the message, remind in its thread at the deadline, and print
the history. Used by the scheduler, the `/backup checklist` listeners and the CLI alike.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import date, datetime

from bot.core.catalog import parse_iso
from bot.core.checklist import (
    CADENCES,
    Change,
    Checklist,
    ChecklistStore,
    due_cadences,
    fold,
    items_for,
)
from bot.core.evidence import Evidence
from bot.core.jobs import ACTOR, Runtime
from bot.render.checklist import checklist_message, layout, parse_block_id, reminder_message
from bot.render.common import local_time

log = logging.getLogger(__name__)
_update_locks: dict[int, threading.Lock] = {}
_update_guard = threading.Lock()


def store(rt: Runtime) -> ChecklistStore:
    return ChecklistStore(rt.services.catalog)


def today(rt: Runtime, now: datetime | None = None) -> date:
    return (now or rt.now()).astimezone(rt.sched.tz).date()


def todays_cadences(rt: Runtime, day: date) -> tuple[str, ...]:
    return due_cadences(day, rt.sched.checklist_weekday, rt.sched.checklist_monthday)


def gather_evidence(rt: Runtime, kinds: Iterable[str | None], now: datetime) -> dict[str, str]:
    def supabase_summary() -> str:
        client = rt.supabase()
        return client.fetch(now).summary(rt.sched.tz) if client else "not configured"

    return Evidence(rt.services, rt.sched, now, supabase_summary).gather(set(kinds))


def post_checklist(rt: Runtime, cadences: Sequence[str] | None = None, *, actor: str = ACTOR,
                   only_if_new: bool = False) -> Checklist | None:
    """Post a checklist: today's due items, or only the items of the cadences given.

    ``only_if_new`` (the daily job, `/backup checklist`): do nothing when today's checklist is
    already in the channel, so a restart or an early `/backup checklist` never doubles it. Such
    calls take turns (both come from the bot's process): the second sees the first's post, and
    after a failed post it posts itself.
    """
    if only_if_new:
        with _POSTING:
            return _post_checklist(rt, cadences, actor=actor, only_if_new=True)
    return _post_checklist(rt, cadences, actor=actor, only_if_new=False)


_POSTING = threading.Lock()


def _post_checklist(rt: Runtime, cadences: Sequence[str] | None, *, actor: str, only_if_new: bool) -> Checklist | None:
    now = rt.now()
    day = today(rt, now)
    s = store(rt)
    if only_if_new and s.for_day(day):
        return None
    chosen = tuple(c for c in CADENCES if c in cadences) if cadences else todays_cadences(rt, day)
    items = items_for(rt.sched.items, chosen)
    if not items:
        log.info("no checklist items due for %s (%s)", day, ",".join(chosen))
        return None
    evidence = gather_evidence(rt, (i.evidence for i in items), now)
    checklist = s.create(day, chosen, items, evidence, now=now, created_by=actor)
    msg = checklist_message(checklist, {}, rt.sched.tz)
    ts = rt.poster.post(msg["text"], msg["blocks"])
    if ts and rt.poster.channel:
        s.set_message(checklist.id, rt.poster.channel, ts)
        checklist = s.get(checklist.id)
    else:
        log.warning("the checklist for %s could not be posted; it is kept in the catalog", day)
    return checklist


def catch_up_checklist(rt: Runtime) -> Checklist | None:
    """At start-up between CHECKLIST_TIME and CHECKLIST_DEADLINE: post today's checklist if the
    bot was down when it was due."""
    start, end = rt.sched.checklist_time, rt.sched.checklist_deadline
    if start is None:
        return None
    local = rt.now().astimezone(rt.sched.tz).time()
    if local < start or (end is not None and local >= end):
        return None
    return post_checklist(rt, only_if_new=True)


def refresh(rt: Runtime, checklist: Checklist) -> bool:
    """Re-render the message at the checklist's current version (fresh block ids)."""
    if not checklist.ts:
        return False
    msg = checklist_message(checklist, store(rt).state(checklist.id), rt.sched.tz)
    return rt.poster.update(checklist.ts, msg["text"], msg["blocks"], channel=checklist.channel)


def apply_click(rt: Runtime, *, channel: str, ts: str, block_id: str, selected: Iterable[str],
                user: str) -> Change | None:
    """A checkbox click: the block's full selection as Slack sent it. Records the user's ticks
    and un-ticks and updates the message; None when the click is not on one of our checklists."""
    parsed = parse_block_id(block_id)
    s = store(rt)
    checklist = s.by_message(channel, ts)
    if parsed is None or checklist is None or parsed[0] != checklist.id:
        log.info("ignoring a checkbox click on an unknown checklist (%s %s %s)", channel, ts, block_id)
        return None
    _id, index, seen_version = parsed
    groups = layout(checklist.items)
    if index >= len(groups):
        return None
    keys = [i.key for i in groups[index].items]
    with _update_guard:
        lock = _update_locks.setdefault(checklist.id, threading.Lock())
    # One click at a time per checklist, so the message's versions are posted in order.
    with lock:
        change = s.apply_selection(checklist.id, keys, selected, seen_version, user, rt.now())
        if change.changed:
            rt.services.catalog.audit("checklist.tick", actor=user, source="slack",
                                      details={"checklist": checklist.id, "day": checklist.day.isoformat(),
                                               "ticked": change.ticks, "unticked": change.unticks})
        if change.changed or change.unclear:  # unclear: show everyone the real state to click on
            refresh(rt, s.get(checklist.id))
    return change


def remind(rt: Runtime) -> bool:
    """At CHECKLIST_DEADLINE: in the thread of today's newest checklist, list the unticked items
    and mention the owners (CHECKLIST_OWNERS, else ALERT_MENTIONS). Quiet when all are done."""
    now = rt.now()
    s = store(rt)
    posted = s.for_day(today(rt, now))
    if not posted:
        return False
    checklist = posted[0]
    state = s.state(checklist.id)
    if all(i.key in state for i in checklist.items):
        return False
    owners = rt.sched.checklist_owners or rt.services.settings.slack.alert_mentions
    msg = reminder_message(checklist, state, owners)
    ts = rt.poster.post(msg["text"], msg["blocks"], channel=checklist.channel, thread_ts=checklist.ts)
    if ts:
        s.mark_reminded(checklist.id, now)
    return ts is not None


def history_lines(rt: Runtime, limit: int = 30) -> list[str]:
    """The checklist history for `backupbot checklist history`: each checklist, each item's
    current state, and every tick and un-tick with who and when (local time)."""
    tz = rt.sched.tz
    lines: list[str] = []
    for checklist, events in store(rt).history(limit):
        state = fold(events)
        done = sum(1 for i in checklist.items if i.key in state)
        where = "posted" if checklist.ts else "not posted"
        lines.append(f"{checklist.day} {'+'.join(checklist.cadences)}: {done}/{len(checklist.items)} done "
                     f"({where} {checklist.posted_at.astimezone(tz):%H:%M %Z})")
        texts = {i.key: i.text for i in checklist.items}
        for item in checklist.items:
            tick = state.get(item.key)
            mark = f"✓ {tick.user} {local_time(tick.at, tz)}" if tick else "☐"
            lines.append(f"  {mark}  {item.text}")
        for e in events:
            lines.append(f"    {local_time(parse_iso(e['at']), tz)} {e['user']} {e['action']}ed {texts.get(e['item_key'], e['item_key'])}")
    return lines
