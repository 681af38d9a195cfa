"""Small Block Kit and formatting helpers shared by every message builder (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

Block = dict[str, Any]
SECTION_MAX = 3000


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def human_duration(seconds: float | timedelta | None) -> str:
    if seconds is None:
        return "?"
    s = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m {sec:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h {m:02d}m"
    return f"{h // 24}d {h % 24}h"


def local_time(dt: datetime | None, tz: ZoneInfo, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    return dt.astimezone(tz).strftime(fmt) if dt else "never"


def holder_phrase(run: dict[str, Any] | None) -> str:
    """What holds a target's lock, from its run row (None: the catalog cannot tell)."""
    if run is None:
        return "a backup or restore of"
    return "a restore over" if run.get("kind") == "restore" else "a backup of"


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mention(entity: str) -> str:
    """<@U…> for users, <!subteam^S…> for user groups."""
    return f"<!subteam^{entity}>" if entity.startswith("S") else f"<@{entity}>"


def section(text: str, **extra: Any) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text or " ", SECTION_MAX)}, **extra}


def fields(pairs: list[tuple[str, str]]) -> Block:
    return {"type": "section", "fields": [
        {"type": "mrkdwn", "text": clip(f"*{k}*\n{v or '—'}", 2000)} for k, v in pairs[:10]]}


def header(text: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": clip(text, 150), "emoji": True}}


def context(*texts: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(t or " ", 2000)} for t in texts[:10]]}


def divider() -> Block:
    return {"type": "divider"}


def button(text: str, action_id: str, value: str = "", style: str | None = None,
           confirm: dict[str, Any] | None = None, url: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"type": "button", "text": {"type": "plain_text", "text": clip(text, 75)}, "action_id": action_id}
    if value:
        b["value"] = clip(value, 2000)
    if style in ("primary", "danger"):
        b["style"] = style
    if confirm:
        b["confirm"] = confirm
    if url:
        b["url"] = url
    return b


def confirm_dialog(title: str, text: str, confirm: str = "Yes", deny: str = "Cancel") -> dict[str, Any]:
    return {
        "title": {"type": "plain_text", "text": clip(title, 100)},
        "text": {"type": "mrkdwn", "text": clip(text, 300)},
        "confirm": {"type": "plain_text", "text": clip(confirm, 30)},
        "deny": {"type": "plain_text", "text": clip(deny, 30)},
    }


def actions(*elements: dict[str, Any], block_id: str | None = None) -> Block:
    block: Block = {"type": "actions", "elements": list(elements)[:25]}
    if block_id:
        block["block_id"] = block_id[:255]
    return block


def message(text: str, blocks: list[Block]) -> dict[str, Any]:
    """A message payload: plain text (notifications, screen readers) plus at most 50 blocks."""
    return {"text": clip(text, 3000), "blocks": blocks[:50]}


def to_text(blocks: list[Block]) -> str:
    """A plain-text rendering of blocks (for the README's examples and for logs)."""
    out: list[str] = []
    for b in blocks:
        t = b.get("type")
        if t in ("section", "header"):
            if "text" in b:
                out.append(b["text"]["text"])
            for f in b.get("fields", []):
                out.append(f["text"].replace("\n", ": ", 1))
        elif t == "context":
            out.append(" · ".join(e.get("text", "") for e in b["elements"]))
        elif t == "actions":
            buttons = " ".join(f"[{e['text']['text']}]" for e in b["elements"] if "text" in e)
            if buttons:
                out.append(buttons)
            for e in b["elements"]:  # checkboxes: one line per option, ticked ones marked
                chosen = {o["value"] for o in e.get("initial_options", [])}
                for o in e.get("options", []) if e.get("type") == "checkboxes" else []:
                    desc = f" — {o['description']['text']}" if "description" in o else ""
                    out.append(f"{'☑' if o['value'] in chosen else '☐'} {o['text']['text']}{desc}")
        elif t == "divider":
            out.append("———")
    return "\n".join(out)
