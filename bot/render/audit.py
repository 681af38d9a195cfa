"""The audit log as text (CLI) and as a Slack message (pure): who did what, when, to which
target and backup, most recent first."""

from __future__ import annotations

import json
import re
from typing import Any
from zoneinfo import ZoneInfo

from bot.core.catalog import parse_iso
from bot.render.common import clip, context, escape, header, local_time, mention, message, section

DEFAULT_N, MAX_N = 20, 100
_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,}$")
# Detail keys worth a glance in a one-line summary, in this order.
_KEYS = ("request_id", "mode", "reason", "step", "error", "destination", "kind", "ok", "command", "rto_s")


def parse_count(args: list[str]) -> int:
    """`[N]` → how many events to show (1..100). Raises ValueError with a sentence. Pure."""
    if not args:
        return DEFAULT_N
    if len(args) > 1 or not (args[0].isascii() and args[0].isdigit()) or int(args[0]) < 1:
        raise ValueError(f"N must be a whole number from 1 to {MAX_N}, got {' '.join(args)!r}")
    return min(int(args[0]), MAX_N)


def summary(event: dict[str, Any]) -> str:
    """`key=value` pairs from an event's details, short."""
    try:
        details = json.loads(event.get("details") or "{}")
    except ValueError:
        details = {}
    parts = [f"{k}={details[k]}" for k in _KEYS if details.get(k) not in (None, "", [])]
    return clip(", ".join(parts), 300)


def audit_line(event: dict[str, Any], tz: ZoneInfo, *, slack: bool = False) -> str:
    """One event as one line; for Slack, user ids become mentions and the rest is escaped."""
    esc = escape if slack else str
    when = local_time(parse_iso(event.get("at")), tz, "%Y-%m-%d %H:%M:%S %Z")
    actor = str(event.get("actor") or "?")
    who = mention(actor) if slack and _SLACK_USER.match(actor) else esc(actor)
    where = " ".join(x for x in (event.get("target"), event.get("backup_id")) if x)
    text = f"{when} {who} ({esc(str(event.get('source') or '?'))}) {esc(str(event.get('action')))}"
    if where:
        text += f" {esc(where)}"
    extra = summary(event)
    if extra:
        text += f" — {esc(extra)}"
    return text


def audit_message(events: list[dict[str, Any]], tz: ZoneInfo, n: int) -> dict[str, Any]:
    """The `/backup audit` answer: the last ``n`` events in as few sections as Slack allows."""
    if not events:
        return message("The audit log is empty.", [section("The audit log is empty.")])
    blocks = [header(f"Audit log — last {len(events)} events")]
    chunk: list[str] = []
    for line in (f"• {audit_line(e, tz, slack=True)}" for e in events):
        if sum(len(x) + 1 for x in chunk) + len(line) > 2900:
            blocks.append(section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    if chunk:
        blocks.append(section("\n".join(chunk)))
    blocks.append(context(f"Times in {tz.key} · `backupbot audit {n}` prints the same"))
    return message(f"Audit log: last {len(events)} events", blocks[:50])
