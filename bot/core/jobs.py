"""The bodies of the scheduled jobs, callable directly (tests call them; the scheduler only decides
when). Each job catches what it can explain, reports through alerts and the channel, and lets
only real bugs escape to the scheduler's error listener.

What reaches Slack goes through a ``Poster`` (``bot.notify.Notifier`` in the bot, a recorder in
tests), so nothing here imports Slack.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Protocol

from bot.core.catalog import parse_iso
from bot.core.cron import cron_trigger, previous_fire_time
from bot.core.drill import DrillResult, run_drill
from bot.core.dump import BackupOutcome
from bot.core.integrity import IntegrityReport, alert_on, check_integrity
from bot.core.monitoring import Alarms, Monitor
from bot.core.schedule_settings import ScheduleSettings
from bot.core.supabase_api import PlatformStatus, SupabaseClient, check_platform_backups
from bot.errors import BackupbotError, Refused
from bot.render.backup import result_message
from bot.render.common import context, local_time
from bot.services import BackupBusy, PruneResult, Services

log = logging.getLogger(__name__)
ACTOR = "backupbot"
SOURCE = "schedule"


class Poster(Protocol):
    """What jobs need from Slack: bot.notify.Notifier fits (post/update never raise)."""

    channel: str | None

    def post(self, text: str, blocks: list[dict[str, Any]] | None = None, *, channel: str | None = None,
             thread_ts: str | None = None) -> str | None: ...

    def update(self, ts: str, text: str, blocks: list[dict[str, Any]] | None = None, *,
               channel: str | None = None) -> bool: ...


@dataclass
class Runtime:
    """Everything a job needs. The clock defaults to the services' (tests inject both)."""

    services: Services
    sched: ScheduleSettings
    poster: Poster
    clock: Callable[[], datetime] | None = None
    supabase_factory: Callable[[], SupabaseClient] | None = field(default=None, repr=False)

    def now(self) -> datetime:
        return (self.clock or self.services.clock)()

    @cached_property
    def alarms(self) -> Alarms:
        return Alarms(self.services)

    @cached_property
    def monitor(self) -> Monitor:
        return Monitor(self.services, self.sched)

    def supabase(self) -> SupabaseClient | None:
        """A SupabaseClient when platform backups are configured, else None."""
        if self.sched.supabase is None:
            return None
        if self.supabase_factory is not None:
            return self.supabase_factory()
        return SupabaseClient(self.sched.supabase)


# -- backups ----------------------------------------------------------------------------------

def scheduled_backup(rt: Runtime, target: str, *, catch_up: bool = False) -> BackupOutcome | None:
    """One scheduled backup, then retention, the result message, the heartbeat and the
    dead-man's switch (so a recovery is announced at once, not 15 minutes later)."""
    try:
        return _backup_then_report(rt, target, catch_up=catch_up)
    except BackupBusy as exc:
        log_busy(target, exc)
        return None


def log_busy(target: str, exc: BackupBusy) -> None:
    """A backup that finds another one of its target running (a cron slot and the start-up
    catch-up at the same moment, the CLI, `/backup now`) leaves the job to that one: not a
    failure, so an info line and no alert."""
    log.info("scheduled backup of %s skipped: %s", target, exc.message)


def _backup_then_report(rt: Runtime, target: str, *, catch_up: bool) -> BackupOutcome | None:
    """scheduled_backup's work; raises BackupBusy, before doing anything, when the target's lock is held."""
    services = rt.services
    try:
        outcome = services.backup(target, actor=ACTOR, source=SOURCE, kind="catch-up" if catch_up else "scheduled")
    except BackupBusy:
        raise
    except BackupbotError as exc:
        # services.backup already recorded the run and emitted backup.failed for the alerts.
        log.warning("scheduled backup of %s failed: %s", target, exc.message)
        return None
    pruned: list[PruneResult] = []
    try:
        pruned = services.prune(dry_run=False, actor=ACTOR, source=SOURCE, target=target)
    except BackupbotError as exc:
        log.warning("retention after the backup of %s failed: %s", target, exc.message)
    post_backup_result(rt, outcome, pruned, catch_up=catch_up)  # services.backup pinged HEARTBEAT_URL
    rt.monitor.check_stale(rt.now(), [target])
    return outcome


def post_backup_result(rt: Runtime, outcome: BackupOutcome, pruned: list[PruneResult], *, catch_up: bool) -> None:
    """The one place a scheduled backup's result reaches the channel: the same message as
    `/backup now` (bot/render/backup.py), plus what retention removed afterwards."""
    msg = result_message(outcome.backup, failed_copies=outcome.failed_copies, tz=rt.sched.tz,
                         actor="the catch-up after a restart" if catch_up else "the schedule")
    notes = []
    deleted = sum(len(p.deleted) for p in pruned)
    if deleted:
        notes.append(f"Retention removed {deleted} old backup(s).")
    notes += [f"⚠ retention could not delete {backup_id}: {err}" for p in pruned for backup_id, err in p.errors.items()]
    if notes:
        msg["blocks"].append(context(" ".join(notes)))
        msg["text"] += " " + " ".join(notes)
    rt.poster.post(msg["text"], msg["blocks"])


def missed_backup(rt: Runtime, target: str, now: datetime) -> datetime | None:
    """The scheduled time of a backup that should have run but, by the catalog, did not: the
    cron's last fire time before now, if no backup run of the target started since then. A fresh
    catalog (created after that time) has missed nothing."""
    runs = rt.services.catalog.runs(kind="backup", target=target, limit=20)
    return _missed_slot(rt, rt.services.settings.targets[target].schedule, runs, now)


def _missed_slot(rt: Runtime, expr: str, runs: list[dict[str, Any]], now: datetime) -> datetime | None:
    """The cron's last fire time before now, if none of ``runs`` (newest first) started since."""
    prev = previous_fire_time(cron_trigger(expr, rt.sched.tz), now)
    if prev is None:
        return None
    if runs:
        # A run cut short because the bot stopped (marked at start-up) did not do the job.
        done = [r for r in runs if not (r["status"] == "failed" and (r["error"] or "").startswith("interrupted"))]
        last = parse_iso(done[0]["started_at"]) if done else None
        return prev if last is None or last < prev else None
    installed = rt.monitor.installed_at()
    return prev if installed is not None and installed < prev else None


def catch_up(rt: Runtime) -> list[str]:
    """At start-up: for each target whose last scheduled backup was missed while the bot was
    down, say so in the channel and take exactly one backup (however many runs were missed).
    Returns the targets it took (or tried to take) a backup of; one already running is left alone."""
    done = []
    now = rt.now()
    for target in rt.services.settings.targets:
        slot = missed_backup(rt, target, now)
        if slot is None:
            continue
        missed = _missed_text(rt, f"scheduled backup of *{target}*", slot)
        ts = rt.poster.post(f"{missed} Taking it now.")
        try:
            _backup_then_report(rt, target, catch_up=True)
        except BackupBusy as exc:
            # A cron slot (or the CLI) got there first, between the announcement and the lock:
            # correct the announcement in place rather than leave "Taking it now" standing.
            log_busy(target, exc)
            busy = f"{missed} A backup of *{target}* is already running; not taking another."
            if ts is None or not rt.poster.update(ts, busy):
                rt.poster.post(busy)
            continue
        done.append(target)
    return done


def catch_up_checks(rt: Runtime) -> list[str]:
    """At start-up, after the backups' catch-up: the weekly integrity check (of every target)
    and each target's restore drill whose last slot passed while the bot was down run once now,
    announced, instead of slipping silently by a week or a month. A drill of one target, or a
    check of one target, does not stand in for the others. Returns what it ran ("integrity",
    "drill:<target>")."""
    ran = []
    now = rt.now()
    catalog = rt.services.catalog
    expr = rt.sched.integrity_schedule
    if expr is not None:
        whole = [r for r in catalog.runs(kind="integrity", limit=50) if r["target"] is None]
        slot = _missed_slot(rt, expr, whole, now)
        if slot is not None:
            _announce_catch_up(rt, "weekly integrity check", slot)
            integrity_job(rt)
            ran.append("integrity")
    expr = rt.sched.drill_schedule
    if expr is not None:
        for target in rt.services.settings.targets:
            slot = _missed_slot(rt, expr, catalog.runs(kind="drill", target=target, limit=20), now)
            if slot is not None:
                _announce_catch_up(rt, f"restore drill of *{target}*", slot)
                drill_job(rt, target)
                ran.append(f"drill:{target}")
    return ran


def _announce_catch_up(rt: Runtime, what: str, slot: datetime) -> None:
    rt.poster.post(f"{_missed_text(rt, what, slot)} Running it now.")


def _missed_text(rt: Runtime, what: str, slot: datetime) -> str:
    return (f"⏰ Catch-up: the {what} due {local_time(slot, rt.sched.tz, '%a %d %b %H:%M %Z')} did not run "
            "(backupbot was not running).")


# -- checks -----------------------------------------------------------------------------------

def deadman_job(rt: Runtime) -> None:
    rt.monitor.check_stale(rt.now())


def monitor_job(rt: Runtime) -> None:
    rt.monitor.record(rt.now())


def supabase_job(rt: Runtime) -> PlatformStatus | None:
    client = rt.supabase()
    if client is None:
        return None
    return check_platform_backups(client, rt.alarms, now=rt.now(), repeat=rt.sched.stale_alert_repeat)


def integrity_job(rt: Runtime) -> IntegrityReport:
    report = check_integrity(rt.services, actor=ACTOR, source=SOURCE)
    alert_on(report, rt.alarms, now=rt.now())
    rt.poster.post(report.summary())
    return report


def drill_job(rt: Runtime, target: str | None = None, *, actor: str = ACTOR, source: str = SOURCE) -> list[DrillResult]:
    """Scheduled: every target in turn; on demand: the one asked for. Posts each result."""
    names = [target] if target else list(rt.services.settings.targets)
    results = []
    for name in names:
        try:
            result = run_drill(rt.services, name, actor=actor, source=source, alarms=rt.alarms)
        except Refused as exc:
            if actor != ACTOR:
                raise  # someone asked: tell them
            log.info("scheduled drill of %s skipped: %s", name, exc.message)  # one is already running
            continue
        except BackupbotError as exc:  # one target's trouble must not stop the others' drills
            if actor != ACTOR:
                raise
            log.warning("scheduled drill of %s failed: %s", name, exc.message)
            continue
        post_drill_result(rt, result, actor=actor)
        results.append(result)
    return results


def post_drill_result(rt: Runtime, result: DrillResult, *, actor: str) -> None:
    who = "" if actor == ACTOR else f" (asked by <@{actor}>)" if actor.startswith(("U", "W")) else f" (by {actor})"
    lines = [result.summary() + who]
    if result.scratch:
        lines.append(f"Scratch database {result.scratch}: {'dropped' if result.dropped else 'NOT dropped, drop it by hand'}.")
    if not result.ok and result.report_lines:
        lines.append("```" + "\n".join(result.report_lines[-15:])[:2500] + "```")
    rt.poster.post("\n".join(lines))
