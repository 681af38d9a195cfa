"""`/backup status [target]`: last good backup and its age, next scheduled run, retention, storage,
database size and trend, open alerts — the same report as `backupbot status`."""

from __future__ import annotations

from typing import Any

from bot.core.status import gather_status
from bot.render.backup import status_message
from commands.help_command import usage_message
from commands.router import Invocation


def register(app: Any, ctx: Any) -> None:
    def handle(inv: Invocation, respond: Any) -> None:
        if len(inv.args) > 1:
            respond(**usage_message(ctx.router, problem="`/backup status` takes at most one target"))
            return
        # The scheduler sets ctx.next_run (a callable returning an ISO time or None) when it runs.
        report = gather_status(ctx.core, next_run=getattr(ctx, "next_run", None),
                               target=inv.args[0] if inv.args else None)
        respond(response_type="ephemeral", **status_message(report, ctx.settings.tz))

    ctx.router.add("status", "status [target]", "last backup, schedule, storage, database size, open alerts",
                   handle)
