"""The `/backup` slash command: acks at once, dedups Slack retries, checks the channel and
permissions, audits, and hands the parsed invocation to the registered subcommand."""

from __future__ import annotations

from typing import Any

from bot.errors import BackupbotError
from commands.help_command import usage_message
from commands.router import Invocation


def register(app: Any, ctx: Any) -> None:
    @app.command("/backup")
    def backup(ack: Any, command: dict[str, Any], respond: Any, request: Any) -> None:
        retry = request.headers.get("x-slack-retry-num", ["0"])
        retry_num = int(retry[0] if isinstance(retry, list) else retry or 0)
        inv = Invocation.from_command(command, retry_num)
        # A Slack retry repeats a request we already acknowledged: never act on it twice.
        if retry_num > 0 or (inv.trigger_id and not ctx.first_time(f"trigger:{inv.trigger_id}")):
            ack()
            return
        if not ctx.channel_allowed(inv.channel_id):
            # Recorded before the user is told: a fast local write, well inside the ack's 3 s.
            ctx.audit("slack.refused", inv.user_id, command=inv.text, reason="channel", channel=inv.channel_id,
                      then=lambda: ack(text=f"backupbot works in <#{ctx.settings.slack.channel}>; run `/backup` there."))
            return
        sub = ctx.router.subcommands.get(inv.sub)
        if sub is None:
            problem = f"unknown subcommand `{inv.sub}`" if inv.sub != "help" else None
            ctx.audit("slack./backup", inv.user_id, command=inv.text, result="usage",
                      then=lambda: ack(**usage_message(ctx.router, problem=problem)))
            return
        # Ack before the permission check: resolving a user group is a Web API call that a rate
        # limit (Retry-After) can stretch past Slack's 3-second bound for the ack.
        ack()
        if sub.operators_only and not ctx.is_operator(inv.user_id):
            ctx.audit("slack.refused", inv.user_id, command=inv.text, reason="not an operator",
                      then=lambda: respond(text=f"Only backup operators may run `/backup {sub.name}` "
                                                "(BACKUP_OPERATORS)." + ctx.lookup_note(ctx.settings.slack.operators),
                                           response_type="ephemeral"))
            return
        ctx.audit(f"slack./backup {sub.name}", inv.user_id, command=inv.text, channel=inv.channel_id)
        try:
            sub.handler(inv, respond)
        except BackupbotError as exc:
            respond(text=f":x: {exc.message}", response_type="ephemeral")
