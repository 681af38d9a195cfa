"""Schedules are tested by asking triggers for their next fire times, never by waiting for them:
time zones, both DST changes, crontab weekday numbering, and the jobs the scheduler is given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.core.cron import cron_trigger, next_fire_times, previous_fire_time
from bot.core.schedule_settings import ScheduleSettings
from bot.core.scheduler import build_scheduler, job_specs
from bot.errors import ConfigError
from bot.services import Services

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
FAKE_URL = "postgresql://app:pw@127.0.0.1:1/crm"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(expr: str, tz: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    return [t.astimezone(UTC) for t in next_fire_times(cron_trigger(expr, tz), after, count)]


def test_daily_backup_in_berlin_runs_once_at_0300_on_the_night_clocks_spring_forward():
    # GIVEN 02:30 every day in Berlin; on 2024-03-31 02:00-03:00 does not exist
    # WHEN we ask for the fire times around that night
    got = fires("30 2 * * *", BERLIN, utc(2024, 3, 30, 0), 3)
    # THEN 02:30 CET on the 30th, the first instant after the gap (03:30 CEST) on the 31st, then 02:30 CEST
    assert got == [utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1, 30), utc(2024, 4, 1, 0, 30)]
    assert [t.astimezone(BERLIN).strftime("%H:%M %Z") for t in got] == ["02:30 CET", "03:30 CEST", "02:30 CEST"]


def test_daily_backup_in_berlin_runs_once_on_the_night_clocks_fall_back():
    # GIVEN 02:30 every day; on 2024-10-27 02:00-03:00 happens twice (CEST, then CET)
    got = fires("30 2 * * *", BERLIN, utc(2024, 10, 26, 12), 3)
    # THEN one run that night (the first 02:30), not two as a bare APScheduler CronTrigger gives
    assert got == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30), utc(2024, 10, 29, 1, 30)]


@pytest.mark.parametrize("after, expected_utc", [
    # spring forward 2024-03-10: 01:30 EST, then 01:30 EDT
    (utc(2024, 3, 9, 12), [utc(2024, 3, 10, 6, 30), utc(2024, 3, 11, 5, 30)]),
    # fall back 2024-11-03: 01:30 happens twice, the backup runs once (in EDT)
    (utc(2024, 11, 2, 12), [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]),
])
def test_new_york_daily_schedule_follows_local_time_across_dst(after, expected_utc):
    assert fires("30 1 * * *", NEW_YORK, after, 2) == expected_utc


@pytest.mark.parametrize("after", [utc(2024, 3, 31, 0, 40), utc(2024, 10, 27, 0, 40)])
def test_every_15_minutes_keeps_real_15_minute_steps_across_both_dst_changes(after):
    got = fires("*/15 * * * *", BERLIN, after, 8)
    assert got[0] == utc(2024, 3 if after.month == 3 else 10, after.day, 0, 45)
    assert [b - a for a, b in zip(got, got[1:], strict=False)] == [timedelta(minutes=15)] * 7


def test_crontab_weekday_zero_is_sunday_as_in_crontab_not_monday_as_in_apscheduler():
    # 2024-06-05 is a Wednesday; the default integrity check is "0 4 * * 0"
    assert fires("0 4 * * 0", ZoneInfo("UTC"), utc(2024, 6, 5), 1) == [utc(2024, 6, 9, 4)]
    assert fires("0 4 * * 7", ZoneInfo("UTC"), utc(2024, 6, 5), 1) == [utc(2024, 6, 9, 4)]
    assert [t.strftime("%a") for t in fires("0 9 * * 1-5", ZoneInfo("UTC"), utc(2024, 6, 7, 12), 3)] == \
        ["Mon", "Tue", "Wed"]


def test_previous_fire_time_finds_the_last_slot_before_now():
    assert previous_fire_time(cron_trigger("0 2 * * *", BERLIN), utc(2024, 6, 5, 1)) == utc(2024, 6, 5, 0)
    assert previous_fire_time(cron_trigger("*/15 * * * *", BERLIN), utc(2024, 6, 5, 1, 7)) == utc(2024, 6, 5, 1)
    assert previous_fire_time(cron_trigger("0 5 1 * *", BERLIN), utc(2024, 6, 5)) == utc(2024, 6, 1, 3)


def test_checklist_post_and_reminder_follow_the_configured_zone_in_summer_and_winter(make_settings):
    settings = make_settings(FAKE_URL, BACKUP_TIMEZONE="Europe/Berlin", CHECKLIST_TIME="09:00",
                             CHECKLIST_DEADLINE="17:30")
    specs = {s.id: s for s in job_specs(settings, ScheduleSettings.from_settings(settings))}
    post, remind = specs["checklist:post"].trigger, specs["checklist:remind"].trigger
    assert post.get_next_fire_time(None, utc(2024, 6, 3)) == utc(2024, 6, 3, 7)  # 09:00 CEST
    assert post.get_next_fire_time(None, utc(2024, 12, 2)) == utc(2024, 12, 2, 8)  # 09:00 CET
    assert remind.get_next_fire_time(None, utc(2024, 6, 3)) == utc(2024, 6, 3, 15, 30)


def test_jobs_are_recreated_with_stable_ids_and_explicit_options(make_settings, tmp_path):
    settings = make_settings(FAKE_URL, BACKUP_TIMEZONE="America/New_York", BACKUP_SCHEDULE="*/15 * * * *")
    services = Services(settings)
    scheduler, rt = build_scheduler(services, settings, poster=_Silent())
    scheduler.start(paused=True)
    try:
        jobs = {j.id: j for j in scheduler.get_jobs()}
        assert set(jobs) == {"backup:prod", "checklist:post", "checklist:remind", "deadman", "monitor",
                             "integrity", "drill"}
        for job in jobs.values():
            assert job.coalesce is True and job.max_instances == 1 and job.misfire_grace_time > 0
        assert jobs["backup:prod"].args == (rt, "prod")
        # Building again at the next start replaces the jobs instead of failing on the ids.
        again, _rt = build_scheduler(services, settings, poster=_Silent())
        for job in again.get_jobs():
            scheduler.add_job(job.func, job.trigger, args=job.args, id=job.id, replace_existing=True)
        assert sorted(j.id for j in scheduler.get_jobs()) == sorted(jobs)
    finally:
        scheduler.shutdown(wait=False)


def test_optional_jobs_can_be_switched_off_and_supabase_runs_only_when_configured(make_settings):
    off = make_settings(FAKE_URL, INTEGRITY_SCHEDULE="off", DRILL_SCHEDULE="off", CHECKLIST_TIME="off")
    ids = {s.id for s in job_specs(off, ScheduleSettings.from_settings(off))}
    assert "integrity" not in ids and "drill" not in ids and "checklist:post" not in ids
    on = make_settings(FAKE_URL, SUPABASE_ACCESS_TOKEN="sbp_0123456789abcdef", SUPABASE_PROJECT_REF="abcdefghijklmnopqrst")
    assert "supabase" in {s.id for s in job_specs(on, ScheduleSettings.from_settings(on))}


@pytest.mark.parametrize("env, variable", [
    ({"BACKUP_SCHEDULE": "every night"}, "BACKUP_SCHEDULE"),
    ({"CHECKLIST_TIME": "9am"}, "CHECKLIST_TIME"),
    ({"CHECKLIST_DEADLINE": "25:00"}, "CHECKLIST_DEADLINE"),
    ({"CHECKLIST_WEEKDAY": "funday"}, "CHECKLIST_WEEKDAY"),
    ({"CHECKLIST_MONTHDAY": "0"}, "CHECKLIST_MONTHDAY"),
    ({"CHECKLIST_OWNERS": "carol"}, "CHECKLIST_OWNERS"),
    ({"MAX_BACKUP_AGE": "soon"}, "MAX_BACKUP_AGE"),
    ({"STALE_ALERT_REPEAT": "0h"}, "STALE_ALERT_REPEAT"),
    ({"HEARTBEAT_URL": "hc-ping.com/123"}, "HEARTBEAT_URL"),
    ({"DB_GROWTH_ALERT_PERCENT": "lots"}, "DB_GROWTH_ALERT_PERCENT"),
    ({"DISK_FREE_MIN": "5 parsecs"}, "DISK_FREE_MIN"),
    ({"INTEGRITY_SCHEDULE": "0 4 * * 8"}, "INTEGRITY_SCHEDULE"),
    ({"INTEGRITY_SCHEDULE": "0 4 * * 1/²"}, "INTEGRITY_SCHEDULE"),  # a superscript step: not int()'s words
    ({"MONITOR_SCHEDULE": "0 25 * * *"}, "MONITOR_SCHEDULE"),
    ({"DRILL_SCHEDULE": "monthly"}, "DRILL_SCHEDULE"),
    ({"SUPABASE_ACCESS_TOKEN": "sbp_0123456789abcdef"}, "SUPABASE_PROJECT_REF"),
    ({"SUPABASE_PROJECT_REF": "abcdefghijklmnopqrst"}, "SUPABASE_ACCESS_TOKEN"),
    ({"SUPABASE_ACCESS_TOKEN": "sbp_0123456789abcdef", "SUPABASE_PROJECT_REF": "abcdefghijklmnopqrst",
      "SUPABASE_API_URL": "ftp://x"}, "SUPABASE_API_URL"),
    ({"CHECKLIST_FILE": "/nonexistent/checklist.toml"}, "CHECKLIST_FILE=/nonexistent/checklist.toml"),
])
def test_a_bad_setting_is_one_line_naming_the_variable(make_settings, env, variable):
    settings = make_settings(FAKE_URL, **env)
    with pytest.raises(ConfigError) as err:
        ScheduleSettings.from_settings(settings)
    assert err.value.message.startswith("invalid configuration: ") and err.value.message.endswith(f"({variable})")
    assert "\n" not in err.value.message and "invalid literal" not in err.value.message


def test_disk_threshold_accepts_a_size_or_a_percentage(make_settings):
    size = ScheduleSettings.from_settings(make_settings(FAKE_URL, DISK_FREE_MIN="5GB")).disk_free_min
    assert size.min_bytes == 5 * 1024**3 and size.breached(4 * 1024**3, 100 * 1024**3)
    pct = ScheduleSettings.from_settings(make_settings(FAKE_URL, DISK_FREE_MIN="10%")).disk_free_min
    assert pct.breached(9, 100) and not pct.breached(11, 100)


class _Silent:
    channel = None

    def post(self, *a, **k):
        return None

    def update(self, *a, **k):
        return False


def test_start_hook_starts_the_schedules_and_tells_healthz_the_next_backup(make_settings):
    from types import SimpleNamespace

    from bot.core.scheduler import start_hook
    from bot.runner import health

    settings = make_settings(FAKE_URL, BACKUP_SCHEDULE="0 2 * * *", BACKUP_TIMEZONE="Europe/Berlin")
    ctx = SimpleNamespace(core=Services(settings), settings=settings, notifier=_Silent())
    stop = start_hook(ctx)
    try:
        nxt = ctx.next_run()
        assert nxt is not None and health(ctx)["next_scheduled_run"] == nxt  # type: ignore[arg-type]
        assert datetime.fromisoformat(nxt.replace("Z", "+00:00")).astimezone(BERLIN).strftime("%H:%M") == "02:00"
    finally:
        stop()


def test_next_backup_can_be_computed_without_a_running_scheduler(make_settings):
    from bot.core.scheduler import next_backup_from_config

    settings = make_settings(FAKE_URL, BACKUP_SCHEDULE="30 2 * * *", BACKUP_TIMEZONE="Europe/Berlin")
    assert next_backup_from_config(settings, utc(2024, 10, 26, 12)) == "2024-10-27T00:30:00.000Z"


def test_the_slack_app_registers_the_scheduler_as_a_start_hook(slack_app):
    from bot.core.scheduler import start_hook
    from bot.runner import START_HOOKS

    slack_app()
    assert START_HOOKS.count(start_hook) == 1


def test_a_crashed_or_missed_job_raises_a_schedule_alert_and_its_next_run_clears_it(make_settings):
    from apscheduler.events import (
        EVENT_JOB_ERROR,
        EVENT_JOB_EXECUTED,
        EVENT_JOB_MISSED,
        JobExecutionEvent,
    )

    from bot.core.scheduler import job_listener

    settings = make_settings(FAKE_URL)
    services = Services(settings)
    scheduler, rt = build_scheduler(services, settings, poster=_Silent())
    events: list[tuple[str, dict]] = []
    services.listeners.append(lambda event, data: events.append((event, data)))
    on_event = job_listener(rt)
    when = utc(2024, 6, 3, 2)
    on_event(JobExecutionEvent(EVENT_JOB_ERROR, "integrity", "default", when, exception=RuntimeError("boom")))
    on_event(JobExecutionEvent(EVENT_JOB_MISSED, "backup:prod", "default", when))
    assert [(e, d["target"]) for e, d in events] == [("schedule.alert", "integrity"), ("schedule.alert", "backup:prod")]
    assert "crashed: RuntimeError: boom" in events[0][1]["message"]
    assert "missed its run at Mon 02:00 UTC" in events[1][1]["message"]
    on_event(JobExecutionEvent(EVENT_JOB_EXECUTED, "integrity", "default", when))
    assert events[-1] == ("schedule.resolved", {"kind": "schedule", "target": "integrity"})
