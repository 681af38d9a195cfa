"""`/backup help` and the usage message shown for unknown or malformed subcommands."""

from __future__ import annotations

from typing import Any

from bot.render.common import context, message, section
from commands.router import Invocation, Router


def usage_message(router: Router, problem: str | None = None) -> dict[str, Any]:
    lines = router.usage_lines()
    head = f":warning: {problem}\n" if problem else ""
    body = head + "*Usage*\n" + "\n".join(lines)
    return {"response_type": "ephemeral",
            **message(head + "Usage: " + "; ".join(f"/backup {s.usage}" for s in router.subcommands.values()),
                      [section(body), context("Everything here can also be done with the `backupbot` CLI.")])}


def register(app: Any, ctx: Any) -> None:
    def handle(inv: Invocation, respond: Any) -> None:
        respond(**usage_message(ctx.router))

    ctx.router.add("help", "help", "this message", handle)
