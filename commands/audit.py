"""`/backup audit [N]`: the most recent audit events (operators only)."""

from __future__ import annotations

from typing import Any

from bot.render.audit import audit_message, parse_count
from commands.router import Invocation


def register(app: Any, ctx: Any) -> None:
    def handle(inv: Invocation, respond: Any) -> None:
        try:
            n = parse_count(inv.args)
        except ValueError as exc:
            respond(text=f":x: {exc}\nUsage: `/backup audit [N]`", response_type="ephemeral")
            return
        events = ctx.core.catalog.audit_events(n)
        respond(response_type="ephemeral", **audit_message(events, ctx.settings.tz, n))

    ctx.router.add("audit", "audit [N]", "the last N audit events (default 20)", handle, operators_only=True)
