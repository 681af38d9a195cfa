"""Block Kit for the backup checklist (pure): the interactive message, the deadline reminder and
the read-only summary `/backup checklist` shows.

Within Slack's limits: at most 10 options per checkboxes element (longer groups are split into
several blocks), option text and description at most 75 characters, ``initial_options`` copied
from ``options``, and block ids that carry the checklist's version, so every update gets fresh
ids and Slack cannot keep a stale tick on screen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from bot.core.checklist import CADENCES, Checklist, Item, Tick
from bot.render.common import Block, clip, context, header, mention, message, section

OPTIONS_PER_BLOCK = 10
ACTION_PREFIX = "checklist_tick"
_BLOCK_ID = re.compile(r"^checklist\.(\d+)\.(\d+)\.v(\d+)$")
TITLES = {"daily": "Daily", "weekly": "Weekly", "monthly": "Monthly"}


@dataclass(frozen=True)
class Group:
    index: int  # the block's position among the checklist's checkbox blocks
    cadence: str
    items: tuple[Item, ...]


def layout(items: Sequence[Item]) -> list[Group]:
    """Checkbox blocks in display order: by cadence, at most 10 items each (stable for a checklist)."""
    groups: list[Group] = []
    for cadence in CADENCES:
        mine = [i for i in items if i.cadence == cadence]
        for start in range(0, len(mine), OPTIONS_PER_BLOCK):
            groups.append(Group(len(groups), cadence, tuple(mine[start:start + OPTIONS_PER_BLOCK])))
    return groups


def block_id(checklist_id: int, index: int, version: int) -> str:
    return f"checklist.{checklist_id}.{index}.v{version}"


def parse_block_id(value: str) -> tuple[int, int, int] | None:
    """(checklist id, block index, version) from a checkbox block's id, or None if not ours."""
    m = _BLOCK_ID.match(value or "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def tick_label(tick: Tick, tz: ZoneInfo, day: date) -> str:
    """'✓ <@U123> 09:14' (Slack shows the name); the weekday is added when ticked on a later day."""
    local = tick.at.astimezone(tz)
    when = f"{local:%H:%M}" if local.date() == day else f"{local:%a %H:%M}"
    return f"✓ {mention(tick.user)} {when}"


def _description(item: Item, tick: Tick | None, evidence: Mapping[str, str], tz: ZoneInfo, day: date) -> str:
    found = evidence.get(item.evidence or "", "")
    if tick is None:
        return found
    label = tick_label(tick, tz, day)
    return f"{label} · {found}" if found else label


def option(item: Item, tick: Tick | None, evidence: Mapping[str, str], tz: ZoneInfo, day: date) -> dict[str, Any]:
    opt: dict[str, Any] = {"text": {"type": "mrkdwn", "text": clip(item.text, 75)}, "value": item.key[:150]}
    desc = _description(item, tick, evidence, tz, day)
    if desc:
        opt["description"] = {"type": "mrkdwn", "text": clip(desc, 75)}
    return opt


def _progress(checklist: Checklist, state: Mapping[str, Tick], tz: ZoneInfo) -> str:
    done = sum(1 for i in checklist.items if i.key in state)
    total = len(checklist.items)
    if done == total and total:
        last = max(state.values(), key=lambda t: t.at)
        return f"All {total} done ✓ (last: {tick_label(last, tz, checklist.day)})"
    return f"{done} of {total} done"


def title(checklist: Checklist) -> str:
    kinds = " + ".join(TITLES[c].lower() for c in checklist.cadences if c in TITLES)
    return f"Backup checklist · {checklist.day:%a %d %b %Y} ({kinds})"


def checklist_message(checklist: Checklist, state: Mapping[str, Tick], tz: ZoneInfo) -> dict[str, Any]:
    """The interactive checklist at its current version."""
    blocks: list[Block] = [
        header(title(checklist)),
        context(f"Tick each item when done; the grey lines are what backupbot found at "
                f"{checklist.posted_at.astimezone(tz):%H:%M %Z}."),
    ]
    shown_cadence = None
    for group in layout(checklist.items):
        if group.cadence != shown_cadence:
            blocks.append(section(f"*{TITLES[group.cadence]}*"))
            shown_cadence = group.cadence
        options = [option(i, state.get(i.key), checklist.evidence, tz, checklist.day) for i in group.items]
        element: dict[str, Any] = {"type": "checkboxes", "action_id": f"{ACTION_PREFIX}_{group.index}",
                                   "options": options}
        ticked = [o for o, i in zip(options, group.items, strict=True) if i.key in state]
        if ticked:
            element["initial_options"] = ticked
        blocks.append({"type": "actions", "block_id": block_id(checklist.id, group.index, checklist.version),
                       "elements": [element]})
    progress = _progress(checklist, state, tz)
    blocks.append(context(progress))
    return message(f"{title(checklist)}: {progress}", blocks)


def open_items(checklist: Checklist, state: Mapping[str, Tick]) -> list[Item]:
    return [i for i in checklist.items if i.key not in state]


def reminder_message(checklist: Checklist, state: Mapping[str, Tick], owners: Sequence[str]) -> dict[str, Any]:
    """The deadline reminder for the checklist's thread: only the unticked items."""
    todo = open_items(checklist, state)
    who = " ".join(mention(o) for o in owners)
    lines = "\n".join(f"• {i.text}" for i in todo)
    head = f"⏰ {len(todo)} item(s) on {checklist.day:%a %d %b}'s backup checklist are not ticked yet"
    text = f"{who + ' ' if who else ''}{head}:\n{lines}"
    return message(text, [section(text)])


def summary_message(checklist: Checklist, state: Mapping[str, Tick], tz: ZoneInfo,
                    permalink: str | None = None) -> dict[str, Any]:
    """Read-only state (for an ephemeral answer): ticks, who and when, and the evidence."""
    lines = []
    for item in checklist.items:
        tick = state.get(item.key)
        mark = tick_label(tick, tz, checklist.day) if tick else "☐"
        found = checklist.evidence.get(item.evidence or "", "")
        lines.append(f"{mark}  *{item.text}*" + (f" — {found}" if found else ""))
    blocks: list[Block] = [header(title(checklist)), section("\n".join(lines))]
    foot = _progress(checklist, state, tz) + (f" · <{permalink}|open the checklist>" if permalink else "")
    blocks.append(context(foot))
    return message(f"{title(checklist)}: {_progress(checklist, state, tz)}", blocks)
