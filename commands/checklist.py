"""`/backup checklist` and the checklist's checkboxes: show today's state (posting today's
checklist if it is not in the channel yet), and record each tick and un-tick from a click.

Also hooks the scheduler into `backupbot run` (bot.runner.START_HOOKS), since the schedules and
the checklist are one feature."""

from __future__ import annotations

import logging
import re
from typing import Any

from bot.core import checklist_jobs
from bot.core.checklist import ChecklistStore
from bot.core.jobs import Runtime
from bot.core.schedule_settings import ScheduleSettings
from bot.render.checklist import ACTION_PREFIX, summary_message
from commands.router import Invocation

log = logging.getLogger(__name__)


def register(app: Any, ctx: Any) -> None:
    sched = ScheduleSettings.from_settings(ctx.settings)  # a bad setting stops start-up with one line
    rt = Runtime(ctx.core, sched, ctx.notifier)
    _register_start_hook()

    def show(inv: Invocation, respond: Any) -> None:
        posted = ChecklistStore(ctx.core.catalog).for_day(checklist_jobs.today(rt))
        if not posted:
            respond(text="No checklist in the channel yet today: posting it now.", response_type="ephemeral")
            ctx.submit(checklist_jobs.post_checklist, rt, actor=inv.user_id, only_if_new=True)
            return
        checklist = posted[0]
        state = ChecklistStore(ctx.core.catalog).state(checklist.id)
        link = ctx.notifier.permalink(checklist.ts, channel=checklist.channel) if checklist.ts else None
        respond(response_type="ephemeral", **summary_message(checklist, state, sched.tz, link))

    ctx.router.add("checklist", "checklist", "today's backup checklist: what is done, by whom (posts it if needed)",
                   show)

    @app.action(re.compile(rf"^{ACTION_PREFIX}_\d+$"))
    def on_tick(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        container = body.get("container") or {}
        channel = (body.get("channel") or {}).get("id") or container.get("channel_id")
        ts = container.get("message_ts") or (body.get("message") or {}).get("ts")
        user = (body.get("user") or {}).get("id")
        if not (channel and ts and user):
            log.warning("checkbox click without channel, message or user; ignored")
            return
        selected = [o.get("value", "") for o in action.get("selected_options") or []]
        checklist_jobs.apply_click(rt, channel=channel, ts=ts, block_id=action.get("block_id", ""),
                                   selected=selected, user=user)


def _register_start_hook() -> None:
    from bot.core.scheduler import start_hook
    from bot.runner import START_HOOKS

    if start_hook not in START_HOOKS:
        START_HOOKS.append(start_hook)
