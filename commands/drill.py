"""`/backup drill [target]` (operators): restore the newest backup into a scratch database, check
it, time it, drop it, and post the result in the channel."""

from __future__ import annotations

import logging
from typing import Any

from bot.core.jobs import Runtime, drill_job
from bot.core.schedule_settings import ScheduleSettings
from bot.errors import BackupbotError
from commands.router import Invocation

log = logging.getLogger(__name__)


def register(app: Any, ctx: Any) -> None:
    rt = Runtime(ctx.core, ScheduleSettings.from_settings(ctx.settings), ctx.notifier)

    def run(target: str, user: str, channel: str) -> None:
        try:
            drill_job(rt, target, actor=user, source="slack")
        except BackupbotError as exc:  # e.g. a drill of this target is already running
            ctx.notifier.ephemeral(user, f":x: {exc.message}", channel=channel)

    def handle(inv: Invocation, respond: Any) -> None:
        if len(inv.args) > 1:
            respond(text="Usage: `/backup drill [target]`", response_type="ephemeral")
            return
        target = ctx.settings.target(inv.args[0] if inv.args else None).name  # unknown: NotFound, shown
        latest = ctx.core.catalog.latest_good(target)
        if latest is None:
            respond(text=f":x: There is no backup of {target} to restore yet: `/backup now` takes one.",
                    response_type="ephemeral")
            return
        respond(text=f"🧪 Restore drill of *{target}* started: backup `{latest.id}` into a scratch database. "
                     "The result will be posted in the channel.", response_type="ephemeral")
        ctx.submit(run, target, inv.user_id, inv.channel_id)

    ctx.router.add("drill", "drill [target]", "restore drill: newest backup into a scratch db, timed, then dropped",
                   handle, operators_only=True)
