"""CLI verbs for the schedules feature (wired into bot/cli.py): `backupbot checklist post
[daily|weekly|monthly]`, `backupbot checklist history`, `backupbot drill [--target T]` and
`backupbot schedule`. Thin: parse, validate the settings, call the same code the bot runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bot.config import Settings
from bot.core import monitoring, supabase_api  # noqa: F401  (their sections join `backupbot status`)
from bot.core.catalog import utcnow
from bot.core.checklist import CADENCES
from bot.core.schedule_settings import ScheduleSettings
from bot.errors import ConfigError


def add_parsers(sub: Any) -> None:
    cl = sub.add_parser("checklist", help="post the backup checklist to Slack, or print its history")
    cl_sub = cl.add_subparsers(dest="checklist_command", required=True, metavar="ACTION")
    post = cl_sub.add_parser("post", help="post a checklist now (default: today's due items)")
    post.add_argument("cadence", nargs="?", choices=CADENCES, help="only the items of this cadence")
    hist = cl_sub.add_parser("history", help="every checklist with who ticked what, when")
    hist.add_argument("--limit", type=int, default=30, help="how many checklists (default 30)")

    dr = sub.add_parser("drill", help="restore drill: newest backup into a scratch database, timed, dropped")
    dr.add_argument("--target", help="named target (default: the default target)")

    sub.add_parser("schedule", help="the scheduled jobs and when each runs next")


def _runtime(settings: Settings, *, slack: bool) -> Any:
    from bot.core.jobs import Runtime
    from bot.services import build_services

    sched = ScheduleSettings.from_settings(settings)
    poster: Any = _NoSlack()
    if slack:
        if not settings.slack.bot_token or not settings.slack.channel:
            raise ConfigError("posting the checklist needs SLACK_BOT_TOKEN and SLACK_CHANNEL", "SLACK_CHANNEL")
        from bot.app import make_client
        from bot.notify import Notifier

        poster = Notifier(make_client(settings), settings.slack.channel)
    return Runtime(build_services(settings), sched, poster)


class _NoSlack:
    """A poster for CLI verbs that report on stdout instead of the channel."""

    channel = None
    last_error: str | None = None

    def post(self, *_a: Any, **_k: Any) -> None:
        return None

    def update(self, *_a: Any, **_k: Any) -> bool:
        return False


def cmd_checklist(args: argparse.Namespace, settings: Settings) -> int:
    from bot.core import checklist_jobs

    if args.checklist_command == "history":
        rt = _runtime(settings, slack=False)
        lines = checklist_jobs.history_lines(rt, limit=max(1, args.limit))
        print("\n".join(lines) if lines else "no checklist has been posted yet")
        return 0
    rt = _runtime(settings, slack=True)
    checklist = checklist_jobs.post_checklist(rt, [args.cadence] if args.cadence else None, actor=args.actor)
    if checklist is None:
        print("no checklist items are due")
        return 0
    if not checklist.ts:
        print(f"error: the checklist could not be posted: {rt.poster.last_error or 'unknown Slack error'}",
              file=sys.stderr)
        return 1
    print(f"posted checklist #{checklist.id} ({'+'.join(checklist.cadences)}, {len(checklist.items)} items) "
          f"to {checklist.channel} at ts {checklist.ts}")
    return 0


def cmd_drill(args: argparse.Namespace, settings: Settings) -> int:
    from bot.core.drill import run_drill

    rt = _runtime(settings, slack=False)
    result = run_drill(rt.services, args.target, actor=args.actor, source="cli", alarms=rt.alarms)
    print(result.summary())
    if result.scratch:
        print(f"scratch database {result.scratch}: {'dropped' if result.dropped else 'NOT dropped: drop it by hand'}")
    for line in result.report_lines:
        print(f"  {line}")
    return 0 if result.ok else 1


def cmd_schedule(args: argparse.Namespace, settings: Settings) -> int:
    from bot.core.scheduler import describe_jobs

    sched = ScheduleSettings.from_settings(settings)
    print(f"time zone {sched.timezone}")
    print("\n".join(describe_jobs(settings, utcnow(), sched)))
    return 0


COMMANDS = {"checklist": cmd_checklist, "drill": cmd_drill, "schedule": cmd_schedule}
