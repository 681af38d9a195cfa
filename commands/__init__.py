"""Slack listeners only: parse → ack → call the core → render → respond.

Each module has ``register(app, ctx)``; ``register_all`` wires them in a fixed order."""

from __future__ import annotations

from typing import Any


def register_all(app: Any, ctx: Any) -> None:
    from commands import backup_command, help_command

    help_command.register(app, ctx)
    for module in _feature_modules():
        module.register(app, ctx)
    backup_command.register(app, ctx)  # the /backup dispatcher last: it sees every subcommand


def _feature_modules() -> list[Any]:
    """Feature modules that register subcommands and actions (imported lazily, in order)."""
    import importlib

    names = ["commands.backup_now", "commands.listing", "commands.status", "commands.restore",
             "commands.checklist", "commands.drill", "commands.audit", "commands.alerts"]
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module: do not hide it
                raise
    return modules
