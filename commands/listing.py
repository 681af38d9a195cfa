"""`/backup list [target] [N]`: the newest backups as Block Kit (id, time in the configured time
zone, size, verified state, copies), answered privately to whoever asked."""

from __future__ import annotations

from typing import Any

from bot.render.backup import LIST_MAX, list_message
from commands.help_command import usage_message
from commands.router import Invocation

DEFAULT_LIMIT = 10


def parse_list_args(args: list[str], targets: set[str]) -> tuple[str | None, int]:
    """``[target] [N]`` -> (target or None, N). A lone number is N unless a target has that name.

    Raises ValueError with a message for the user when N is malformed or there are extra words.
    """
    if len(args) > 2:
        raise ValueError("`/backup list` takes at most a target and a number")
    target: str | None = None
    count: str | None = None
    if len(args) == 2:
        target, count = args
    elif len(args) == 1:
        if args[0].isascii() and args[0].isdigit() and args[0] not in targets:
            count = args[0]
        else:
            target = args[0]
    if count is None:
        return target, DEFAULT_LIMIT
    if not (count.isascii() and count.isdigit()) or not 1 <= int(count) <= LIST_MAX:
        raise ValueError(f"N must be a whole number from 1 to {LIST_MAX}, got `{count}`")
    return target, int(count)


def register(app: Any, ctx: Any) -> None:
    def handle(inv: Invocation, respond: Any) -> None:
        try:
            target, limit = parse_list_args(inv.args, set(ctx.settings.targets))
        except ValueError as exc:
            respond(**usage_message(ctx.router, problem=str(exc)))
            return
        backups = ctx.core.list_backups(target, limit)  # an unknown target raises NotFound: shown as-is
        respond(response_type="ephemeral", **list_message(backups, tz=ctx.settings.tz, target=target))

    ctx.router.add("list", "list [target] [N]", f"the newest N backups (default {DEFAULT_LIMIT})", handle)
