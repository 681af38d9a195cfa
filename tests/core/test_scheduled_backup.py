"""Scheduled backup jobs, called directly: catch-up after downtime (by the catalog's record),
retention and the result message after each backup, and the heartbeat ping."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent

from bot.core.catalog import iso, utcnow
from bot.core.heartbeat import ping_heartbeat
from bot.core.jobs import Runtime, catch_up, missed_backup, scheduled_backup
from bot.core.schedule_settings import ScheduleSettings
from bot.core.scheduler import job_listener
from bot.errors import BackupbotError
from bot.services import BackupBusy
from tests.fakes.poster import RecordingPoster


@pytest.fixture
def heartbeat() -> Iterator[tuple[str, list[str]]]:
    """A healthchecks.io-like endpoint on 127.0.0.1: (url, paths pinged)."""
    pings: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            pings.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *a: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ping/0f1e2d3c", pings
    server.shutdown()


def runtime(make_services: Any, url: str, **env: str) -> tuple[Runtime, RecordingPoster]:
    services = make_services(url, BACKUP_TIMEZONE="Europe/Berlin", **env)
    poster = RecordingPoster()
    return Runtime(services, ScheduleSettings.from_settings(services.settings), poster), poster


def pretend_last_backup_ran(rt: Runtime, ago: timedelta) -> None:
    """The catalog as a bot that stopped long ago left it: its last backup run, `ago` back."""
    run_id = rt.services.catalog.start_run("backup", "prod", "backupbot", "schedule", {"kind": "scheduled"})
    rt.services.catalog.finish_run(run_id, "ok")
    with rt.services.catalog.tx() as db:
        db.execute("UPDATE runs SET started_at = ? WHERE id = ?", [iso(utcnow() - ago), run_id])


def test_catch_up_after_downtime_runs_exactly_one_backup_and_announces_it(crm_db, make_services, heartbeat):
    # GIVEN a daily 02:00 schedule and a bot that was down for three days (three missed runs)
    url, pings = heartbeat
    rt, poster = runtime(make_services, crm_db, BACKUP_SCHEDULE="0 2 * * *", HEARTBEAT_URL=url)
    pretend_last_backup_ran(rt, timedelta(days=3, hours=1))
    assert missed_backup(rt, "prod", utcnow()) is not None
    # WHEN the bot starts and runs its catch-up
    assert catch_up(rt) == ["prod"]
    # THEN exactly one backup was taken, announced as a catch-up, followed by its result
    backups = rt.services.catalog.list(target="prod")
    assert len(backups) == 1 and backups[0].kind == "catch-up"
    first, second = poster.texts()
    assert "Catch-up" in first and "did not run" in first and "prod" in first
    assert backups[0].id in second and "catch-up after a restart" in second
    assert pings == ["/ping/0f1e2d3c"]
    # and starting again does not take another one
    assert catch_up(rt) == []
    assert len(rt.services.catalog.list(target="prod")) == 1


def test_no_catch_up_when_the_last_slot_ran_or_the_catalog_is_new(make_services):
    rt, poster = runtime(make_services, "postgresql://app:pw@127.0.0.1:1/crm", BACKUP_SCHEDULE="*/15 * * * *")
    # A brand-new catalog: nothing was scheduled before it existed.
    assert missed_backup(rt, "prod", utcnow()) is None
    # A run since the last 15-minute slot: nothing missed.
    pretend_last_backup_ran(rt, timedelta(seconds=0))
    assert missed_backup(rt, "prod", utcnow()) is None
    assert catch_up(rt) == [] and poster.posts == []


def test_a_backup_cut_short_by_the_bot_stopping_is_caught_up(make_services):
    rt, _poster = runtime(make_services, "postgresql://app:pw@127.0.0.1:1/crm", BACKUP_SCHEDULE="*/15 * * * *")
    pretend_last_backup_ran(rt, timedelta(hours=2))
    run_id = rt.services.catalog.start_run("backup", "prod", "backupbot", "schedule")
    rt.services.catalog.mark_abandoned_runs()  # what build_services does at the next start
    assert rt.services.catalog.run(run_id)["error"].startswith("interrupted")
    assert missed_backup(rt, "prod", utcnow()) is not None


def test_scheduled_backup_applies_retention_and_posts_the_result(crm_db, make_services):
    rt, poster = runtime(make_services, crm_db, RETENTION_DAILY="1", RETENTION_WEEKLY="0",
                         RETENTION_MONTHLY="0", RETENTION_MIN_VERIFIED="0")
    first = scheduled_backup(rt, "prod")
    second = scheduled_backup(rt, "prod")
    assert first is not None and second is not None
    # Both were taken today: retention keeps the newest of the day only.
    assert [b.id for b in rt.services.catalog.list(target="prod")] == [second.backup.id]
    assert "Retention removed 1 old backup(s)." in poster.texts()[-1]
    assert "the schedule" in poster.texts()[-1]


def test_a_failing_scheduled_backup_is_reported_by_event_not_raised(make_services):
    rt, poster = runtime(make_services, "postgresql://app:pw@127.0.0.1:1/crm")
    events: list[str] = []
    rt.services.listeners.append(lambda event, _data: events.append(event))
    assert scheduled_backup(rt, "prod") is None
    assert events == ["backup.failed"] and poster.posts == []


def _bot_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("bot.") and r.levelno >= level]


def test_catch_up_meeting_a_running_backup_takes_none_and_corrects_its_announcement(make_services, caplog):
    # GIVEN a missed slot, and a cron slot that fired at the same moment as the start-up catch-up
    # (it holds the target's lock)
    caplog.set_level(logging.INFO)
    rt, poster = runtime(make_services, "postgresql://app:pw@127.0.0.1:1/crm", BACKUP_SCHEDULE="*/15 * * * *")
    pretend_last_backup_ran(rt, timedelta(hours=2))
    events: list[str] = []
    rt.services.listeners.append(lambda event, _data: events.append(event))
    # WHEN the catch-up runs
    with rt.services.target_lock("prod"):
        took = catch_up(rt)
    # THEN it takes no backup, and its one message ends saying so instead of "Taking it now"
    assert took == [] and rt.services.catalog.list(target="prod") == []
    [announcement] = poster.posts
    [corrected] = poster.updates
    assert corrected.ts == announcement.ts
    assert "did not run" in corrected.text and "Taking it now" not in corrected.text
    assert "A backup of *prod* is already running; not taking another." in corrected.text
    # AND the skip is an info line, not a failure: no warning, no event, no alert
    assert [r.levelname for r in _bot_records(caplog, logging.INFO) if "skipped" in r.getMessage()] == ["INFO"]
    assert _bot_records(caplog, logging.WARNING) == []
    assert events == [] and rt.alarms.alerts.open_alerts() == []


def test_scheduled_backup_meeting_a_running_backup_logs_info_and_stays_quiet(make_services, caplog):
    # GIVEN the target's lock held (the catch-up, the CLI or `/backup now` is taking a backup)
    caplog.set_level(logging.INFO)
    rt, poster = runtime(make_services, "postgresql://app:pw@127.0.0.1:1/crm")
    events: list[str] = []
    rt.services.listeners.append(lambda event, _data: events.append(event))
    # WHEN the cron slot's job runs THEN it skips with an info line: nothing posted, no event, no alert
    with rt.services.target_lock("prod"):
        assert scheduled_backup(rt, "prod") is None
    assert [r.levelname for r in _bot_records(caplog, logging.INFO) if "skipped" in r.getMessage()] == ["INFO"]
    assert _bot_records(caplog, logging.WARNING) == []
    assert poster.posts == [] and events == [] and rt.alarms.alerts.open_alerts() == []


def test_a_job_ending_in_backup_busy_is_logged_not_alerted_by_the_scheduler(make_services, caplog):
    # GIVEN the scheduler's job listener
    caplog.set_level(logging.INFO)
    rt, poster = runtime(make_services, "postgresql://app:pw@127.0.0.1:1/crm")
    on_event = job_listener(rt)
    # WHEN a job ends in BackupBusy (another backup of its target holds the lock)
    on_event(JobExecutionEvent(EVENT_JOB_ERROR, "backup:prod", "default", utcnow(),
                               exception=BackupBusy("prod", None), traceback="BackupBusy"))
    # THEN no schedule alert is raised; an info line says it was skipped
    assert rt.alarms.open_alert("schedule", "backup:prod") is None and poster.posts == []
    assert [r.levelname for r in _bot_records(caplog, logging.INFO) if "skipped" in r.getMessage()] == ["INFO"]


def test_heartbeat_failure_is_logged_never_raised(caplog):
    assert ping_heartbeat("http://127.0.0.1:9/nothing-listens-here", timeout=2) is False
    assert "heartbeat ping failed" in caplog.text


def test_busy_message_shows_the_start_in_the_configured_zone():
    from zoneinfo import ZoneInfo

    run = {"started_at": "2026-11-29T20:15:00.000Z", "actor": "cron", "source": "scheduler"}
    busy = BackupBusy("prod", run, ZoneInfo("Europe/Berlin"))
    assert "started 2026-11-29 21:15 CET by cron via scheduler" in busy.message
    assert "started 2026-11-29 20:15 UTC" in BackupBusy("prod", run).message


def test_every_completed_backup_pings_the_heartbeat_not_only_scheduled_ones(crm_db, make_services, heartbeat,
                                                                           monkeypatch, tmp_path, capsys):
    from bot.cli import main
    from tests.fixtures.cli import empty_env_file

    url, pings = heartbeat
    # GIVEN cron running `backupbot backup` (no bot process at all) with HEARTBEAT_URL set
    for key, value in {"DATABASE_URL": crm_db, "BACKUP_DIR": str(tmp_path / "b"),
                       "BACKUPBOT_DB": str(tmp_path / "c.db"), "HEARTBEAT_URL": url}.items():
        monkeypatch.setenv(key, value)
    # WHEN it completes a backup THEN the outside monitor hears of it
    assert main(["--env-file", empty_env_file(tmp_path), "backup"]) == 0
    assert pings == ["/ping/0f1e2d3c"]
    assert url not in capsys.readouterr().out  # the ping URL is a secret
    # AND a backup that fails, or a restore's safety backup, is no ping
    broken = make_services(crm_db.rsplit("/", 1)[0] + "/no_such_db", HEARTBEAT_URL=url)
    with pytest.raises(BackupbotError):
        broken.backup(actor="t", source="cli")
    services = make_services(crm_db, HEARTBEAT_URL=url)
    backup = services.backup(actor="t", source="cli").backup
    assert len(pings) == 2
    from bot.core.restore import RestoreRequest

    _outcome, safety = services.restore(RestoreRequest(backup.id, mode="in-place"), actor="t", source="cli")
    assert safety is not None and len(pings) == 2


def test_an_integrity_check_or_drill_missed_while_down_runs_once_at_start_up(crm_db, make_services):
    from bot.core.jobs import catch_up_checks

    # GIVEN a bot installed weeks ago, with one backup, whose weekly integrity check and monthly
    # drill slots passed while it was down (their last runs are older than the slots)
    rt, poster = runtime(make_services, crm_db, INTEGRITY_SCHEDULE="0 4 * * 0", DRILL_SCHEDULE="0 5 1 * *")
    rt.services.backup(actor="t", source="cli")
    long_ago = iso(utcnow() - timedelta(days=40))

    def everything_ran_long_ago() -> None:
        with rt.services.catalog.tx() as db:
            db.execute("UPDATE schema_migrations SET applied_at = ?", [long_ago])
            db.execute("UPDATE runs SET started_at = ? WHERE kind IN ('integrity', 'drill')", [long_ago])

    for kind, target in (("integrity", None), ("drill", "prod")):
        rt.services.catalog.finish_run(rt.services.catalog.start_run(kind, target, "backupbot", "schedule"), "ok")
    everything_ran_long_ago()
    # AND someone drilled another target by hand since: that is no drill of prod
    rt.services.catalog.finish_run(rt.services.catalog.start_run("drill", "staging", "U0ALICE", "slack"), "ok")
    # WHEN the bot starts
    assert catch_up_checks(rt) == ["integrity", "drill:prod"]
    # THEN each is announced and runs once: the check verified the backup, the drill restored it
    texts = poster.texts()
    assert any("Catch-up: the weekly integrity check due" in t and "Running it now" in t for t in texts), texts
    assert any("Catch-up: the restore drill of *prod* due" in t for t in texts), texts
    assert rt.services.catalog.runs(kind="integrity")[0]["status"] == "ok"
    assert rt.services.catalog.runs(kind="drill", target="prod")[0]["status"] == "ok"
    # AND starting again runs neither
    assert catch_up_checks(rt) == []
    # AND with the checks switched off, a catalog that would catch both up catches up nothing
    everything_ran_long_ago()
    off, _ = runtime(make_services, crm_db, INTEGRITY_SCHEDULE="off", DRILL_SCHEDULE="off")
    assert catch_up_checks(off) == []
    assert catch_up_checks(rt) == ["integrity", "drill:prod"]  # the same catalog, schedules on


def test_a_heartbeat_that_answers_garbage_or_is_mistyped_never_fails_a_stored_backup(crm_db, make_services, caplog):
    import socket

    # GIVEN a "monitor" behind a proxy that answers with garbage instead of HTTP
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer_garbage() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"garbage\r\n")

    threading.Thread(target=answer_garbage, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/ping/abc"
    try:
        # WHEN a backup completes THEN it is reported done; the failed ping is a warning
        outcome = make_services(crm_db, HEARTBEAT_URL=url).backup(actor="t", source="cli")
    finally:
        listener.close()
    assert outcome.backup.status == "complete"
    assert "heartbeat ping failed" in caplog.text and "/ping/abc" not in caplog.text
    # AND a mistyped HEARTBEAT_URL neither stops the backup nor anything else
    caplog.clear()
    again = make_services(crm_db, HEARTBEAT_URL="hc-ping.com/abc").backup(actor="t", source="cli")
    assert again.backup.status == "complete" and "HEARTBEAT_URL not pinged" in caplog.text
