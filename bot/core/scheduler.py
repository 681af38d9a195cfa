"""The schedules inside `backupbot run` (APScheduler 3.x, in memory, rebuilt at every start).

Jobs have stable ids and are added with ``replace_existing=True``, an explicit misfire grace,
``coalesce=True`` and ``max_instances=1``; cron expressions are read as crontab(5) means them, in
BACKUP_TIMEZONE (bot/core/cron.py). A job that crashes or misses its time raises a ``schedule``
alert; its next good run resolves it.

| id                 | when                                  | does                                  |
|--------------------|---------------------------------------|---------------------------------------|
| backup:<target>    | the target's schedule (BACKUP_SCHEDULE) | backup, retention, result, heartbeat |
| checklist:post     | CHECKLIST_TIME daily                  | post the day's checklist              |
| checklist:remind   | CHECKLIST_DEADLINE daily              | remind in its thread                  |
| deadman            | every 15 minutes                      | dead-man's switch                     |
| monitor            | MONITOR_SCHEDULE                      | daily metrics, growth and disk alerts |
| integrity          | INTEGRITY_SCHEDULE                    | re-verify every stored copy           |
| drill              | DRILL_SCHEDULE                        | restore drill of every target         |
| supabase           | hourly, when configured               | platform backups check                |

At start-up, ``start`` also runs the catch-up (a backup missed while the bot was down, and
today's checklist if it was due) as a one-off job, so serving Slack is not delayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from bot.config import Settings
from bot.core import checklist_jobs, jobs
from bot.core.catalog import iso
from bot.core.cron import CrontabTrigger, cron_trigger
from bot.core.jobs import Poster, Runtime
from bot.core.redact import redact
from bot.core.schedule_settings import ScheduleSettings
from bot.services import BackupBusy, Services

log = logging.getLogger(__name__)

# A backup more than this late (the process was suspended, every worker busy) is skipped and
# alerted as missed; the next slot or the start-up catch-up takes it.
BACKUP_MISFIRE_GRACE_S = 30 * 60
JOB_MISFIRE_GRACE_S = 60 * 60
DEADMAN_CRON = "*/15 * * * *"
SUPABASE_CRON = "7 * * * *"  # hourly, off the top of the hour
WORKERS = 4


@dataclass(frozen=True)
class JobSpec:
    id: str
    trigger: CrontabTrigger
    fn: Callable[..., Any]
    target: str | None = None
    grace: int = JOB_MISFIRE_GRACE_S


def job_specs(settings: Settings, sched: ScheduleSettings) -> list[JobSpec]:
    """Every recurring job the configuration asks for (pure: nothing is started)."""
    tz = sched.tz
    specs = [JobSpec(f"backup:{name}", cron_trigger(t.schedule, tz), jobs.scheduled_backup, name,
                     BACKUP_MISFIRE_GRACE_S) for name, t in settings.targets.items()]
    if sched.checklist_time is not None:
        t = sched.checklist_time
        specs.append(JobSpec("checklist:post", cron_trigger(f"{t.minute} {t.hour} * * *", tz), _post_today))
    if sched.checklist_deadline is not None:
        t = sched.checklist_deadline
        specs.append(JobSpec("checklist:remind", cron_trigger(f"{t.minute} {t.hour} * * *", tz),
                             checklist_jobs.remind))
    specs.append(JobSpec("deadman", cron_trigger(DEADMAN_CRON, tz), jobs.deadman_job))
    for job_id, expr, fn in (("monitor", sched.monitor_schedule, jobs.monitor_job),
                             ("integrity", sched.integrity_schedule, jobs.integrity_job),
                             ("drill", sched.drill_schedule, jobs.drill_job)):
        if expr:
            specs.append(JobSpec(job_id, cron_trigger(expr, tz), fn))
    if sched.supabase is not None:
        specs.append(JobSpec("supabase", cron_trigger(SUPABASE_CRON, tz), jobs.supabase_job))
    return specs


def build_scheduler(services: Services, settings: Settings, clock: Callable[[], datetime] | None = None, *,
                    poster: Poster, sched: ScheduleSettings | None = None) -> tuple[BackgroundScheduler, Runtime]:
    """A configured, not yet started scheduler and the runtime its jobs share."""
    sched = sched or ScheduleSettings.from_settings(settings)
    rt = Runtime(services, sched, poster, clock=clock)
    scheduler = BackgroundScheduler(timezone=sched.tz, executors={"default": ThreadPoolExecutor(WORKERS)})
    for spec in job_specs(settings, sched):
        scheduler.add_job(spec.fn, trigger=spec.trigger, args=[rt, spec.target] if spec.target else [rt],
                          id=spec.id, name=spec.id, replace_existing=True, misfire_grace_time=spec.grace,
                          coalesce=True, max_instances=1)
    scheduler.add_listener(job_listener(rt), EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_EXECUTED)
    return scheduler, rt


def _post_today(rt: Runtime) -> None:
    checklist_jobs.post_checklist(rt, only_if_new=True)


def job_listener(rt: Runtime) -> Callable[[JobExecutionEvent], None]:
    def on_event(event: JobExecutionEvent) -> None:
        job_id = event.job_id
        now = rt.now()
        try:
            if event.code == EVENT_JOB_ERROR and isinstance(event.exception, BackupBusy):
                # Another backup of the target holds its lock and does the job: not a crash.
                log.info("scheduled job %s skipped: %s", job_id, event.exception.message)
            elif event.code == EVENT_JOB_ERROR:
                err = redact(f"{type(event.exception).__name__}: {event.exception}")
                rt.alarms.fire("schedule", job_id, f"scheduled job {job_id} crashed: {err}", now=now,
                               every=rt.sched.stale_alert_repeat, detail=redact(event.traceback or "")[-2000:],
                               hint="This is a bug or an environment problem; the bot's log has the traceback.")
            elif event.code == EVENT_JOB_MISSED:
                when = event.scheduled_run_time.astimezone(rt.sched.tz).strftime("%a %H:%M %Z")
                rt.alarms.fire("schedule", job_id, f"scheduled job {job_id} missed its run at {when}", now=now,
                               every=rt.sched.stale_alert_repeat,
                               hint="The bot was suspended or overloaded; it runs again at the next slot.")
            else:
                rt.alarms.clear("schedule", job_id, now=now)
        except Exception:  # a listener must never take the scheduler down
            log.exception("scheduler listener failed for %s", job_id)

    return on_event


def next_backup_run(scheduler: BackgroundScheduler) -> str | None:
    """ISO time of the next scheduled backup of any target (for /healthz)."""
    times = [j.next_run_time for j in scheduler.get_jobs() if j.id.startswith("backup:") and j.next_run_time]
    return iso(min(times)) if times else None


def next_backup_from_config(settings: Settings, now: datetime | None = None,
                            sched: ScheduleSettings | None = None) -> str | None:
    """ISO time of the next scheduled backup computed from the configuration alone (for
    `backupbot status`, which runs without the bot's scheduler)."""
    sched = sched or ScheduleSettings.from_settings(settings)
    now = now or datetime.now(sched.tz)
    times = [t for s in job_specs(settings, sched) if s.target
             for t in [s.trigger.get_next_fire_time(None, now)] if t is not None]
    return iso(min(times)) if times else None


def start_up(rt: Runtime) -> None:
    """The one-off start-up job: catch up a missed backup, today's checklist, and a missed
    integrity check or restore drill."""
    jobs.catch_up(rt)
    checklist_jobs.catch_up_checklist(rt)
    jobs.catch_up_checks(rt)


def _recovery_listener(rt: Runtime) -> Callable[[str, dict[str, Any]], None]:
    """Any good backup (`/backup now` too) clears the dead-man's switch at once, not within 15 min."""

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "backup.done" and data.get("target"):
            rt.monitor.check_stale(rt.now(), [str(data["target"])])

    return on_event


def start(services: Services, settings: Settings, poster: Poster, *,
          sched: ScheduleSettings | None = None) -> tuple[BackgroundScheduler, Runtime]:
    scheduler, rt = build_scheduler(services, settings, poster=poster, sched=sched)
    services.listeners.append(_recovery_listener(rt))
    scheduler.start()
    scheduler.add_job(start_up, "date", run_date=rt.now() + timedelta(seconds=1), args=[rt], id="catchup",
                      name="catchup", replace_existing=True, misfire_grace_time=JOB_MISFIRE_GRACE_S,
                      coalesce=True, max_instances=1)
    log.info("scheduler started: %s", ", ".join(f"{j.id} next {iso(j.next_run_time)}" for j in scheduler.get_jobs()))
    return scheduler, rt


def start_hook(ctx: Any) -> Callable[[], None]:
    """bot.runner START_HOOKS entry: validate, start the schedules, expose the next run to /healthz."""
    scheduler, _rt = start(ctx.core, ctx.settings, ctx.notifier)
    ctx.next_run = lambda: next_backup_run(scheduler)

    def stop() -> None:
        scheduler.shutdown(wait=False)

    return stop


def describe_jobs(settings: Settings, now: datetime, sched: ScheduleSettings | None = None) -> list[str]:
    """Each job and its next run in the configured zone (for `backupbot schedule` and the docs)."""
    sched = sched or ScheduleSettings.from_settings(settings)
    lines = []
    for spec in job_specs(settings, sched):
        nxt = spec.trigger.get_next_fire_time(None, now)
        when = f"{nxt.astimezone(sched.tz):%a %Y-%m-%d %H:%M %Z}" if nxt else "never"
        lines.append(f"{spec.id:<20} {spec.trigger.expression:<16} next {when}")
    return lines
