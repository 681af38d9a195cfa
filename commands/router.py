"""The `/backup` command: parse the text into a subcommand and its arguments, route it to the
module that registered that subcommand, and answer unknown or malformed input with usage."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Invocation:
    """One `/backup …` as Slack sent it, parsed."""

    sub: str
    args: list[str]
    user_id: str
    channel_id: str
    text: str
    trigger_id: str = ""
    response_url: str = ""
    retry_num: int = 0

    @classmethod
    def from_command(cls, command: dict[str, Any], retry_num: int = 0) -> Invocation:
        text = (command.get("text") or "").strip()
        try:
            words = shlex.split(text.replace("\u201c", '"').replace("\u201d", '"'))
        except ValueError:  # an unbalanced quote: keep the words, let the handler complain
            words = text.split()
        sub = words[0].lower() if words else "help"
        return cls(sub=sub, args=words[1:], user_id=command.get("user_id", ""),
                   channel_id=command.get("channel_id", ""), text=text,
                   trigger_id=command.get("trigger_id", ""), response_url=command.get("response_url", ""),
                   retry_num=retry_num)


# A subcommand handler is called after ack(); it answers with respond() (ephemeral by default).
Handler = Callable[[Invocation, Callable[..., Any]], None]


@dataclass
class Subcommand:
    name: str
    usage: str  # e.g. "now [target]"
    summary: str
    handler: Handler
    operators_only: bool = False


@dataclass
class Router:
    subcommands: dict[str, Subcommand] = field(default_factory=dict)

    def add(self, name: str, usage: str, summary: str, handler: Handler, *, operators_only: bool = False) -> None:
        self.subcommands[name] = Subcommand(name, usage, summary, handler, operators_only)

    def usage_lines(self) -> list[str]:
        return [f"`/backup {s.usage}` — {s.summary}" for s in self.subcommands.values()]


def parse_flags(args: list[str], flags: dict[str, bool]) -> tuple[list[str], dict[str, str | bool]]:
    """Split ``args`` into positionals and ``--flag`` / ``--flag value`` options.

    ``flags`` maps each known flag to whether it takes a value. An unknown flag or a missing value
    raises ValueError with a message for the user.
    """
    positionals: list[str] = []
    options: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            name, eq, inline = a.partition("=")
            if name not in flags:
                raise ValueError(f"unknown option {name}")
            if flags[name]:
                if eq:
                    options[name] = inline
                elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                    i += 1
                    options[name] = args[i]
                else:
                    raise ValueError(f"{name} needs a value")
            else:
                options[name] = True
        else:
            positionals.append(a)
        i += 1
    return positionals, options
