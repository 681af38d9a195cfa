"""Supabase platform backups through a local fake of the Management API: completed, failed and
missing backups, and the API being down (reported, never raised)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.core.alerts import Alerts
from bot.core.catalog import iso
from bot.core.jobs import Runtime, supabase_job
from bot.core.schedule_settings import ScheduleSettings
from bot.core.supabase_api import status_section
from tests.fakes.poster import RecordingPoster
from tests.fakes.supabase_api import FakeSupabaseAPI, backup

REF = "abcdefghijklmnopqrst"
NOW = datetime(2024, 6, 3, 7, 0, tzinfo=UTC)


@pytest.fixture
def api() -> Iterator[FakeSupabaseAPI]:
    with FakeSupabaseAPI() as fake:
        yield fake


def setup(make_services: Any, api: FakeSupabaseAPI, token: str | None = None) -> tuple[Runtime, list[tuple[str, Any]]]:
    services = make_services("postgresql://app:pw@127.0.0.1:1/crm", SUPABASE_ACCESS_TOKEN=token or api.token,
                             SUPABASE_PROJECT_REF=REF, SUPABASE_API_URL=api.url, BACKUP_TIMEZONE="Europe/Berlin")
    events: list[tuple[str, Any]] = []
    services.listeners.append(lambda event, data: events.append((event, data)))
    rt = Runtime(services, ScheduleSettings.from_settings(services.settings), RecordingPoster(), clock=lambda: NOW)
    return rt, events


def test_a_recent_completed_backup_is_shown_with_pitr_and_raises_nothing(make_services, api, caplog):
    api.set_backups(REF, [backup("COMPLETED", iso(NOW - timedelta(hours=30)) or ""),
                          backup("COMPLETED", iso(NOW - timedelta(hours=5)) or "")], pitr_enabled=True)
    rt, events = setup(make_services, api)
    with caplog.at_level(logging.DEBUG):
        status = supabase_job(rt)
    assert status is not None and status.available and status.fresh()
    assert status.summary(rt.sched.tz) == "PITR on; last platform backup Mon 04:00 ✓"
    assert events == []
    (seen,) = api.requests
    assert seen.path == f"/v1/projects/{REF}/database/backups"
    assert seen.headers["Authorization"] == f"Bearer {api.token}"
    assert api.token not in caplog.text
    # It is the checklist's evidence for "Verify Supabase automatic backup completed".
    assert "Verify Supabase automatic backup completed" in [i.text for i in rt.sched.items]


@pytest.mark.parametrize("backups, expected", [
    ([backup("FAILED", iso(NOW - timedelta(hours=2)) or "")], "(1 failed)"),
    ([], "no backups listed"),
    ([backup("COMPLETED", iso(NOW - timedelta(hours=30)) or "")], "COMPLETED at"),
])
def test_no_completed_backup_within_26h_alerts(make_services, api, backups, expected):
    api.set_backups(REF, backups)
    rt, events = setup(make_services, api)
    supabase_job(rt)
    (event, data), = events
    assert event == "supabase.alert" and data["target"] == REF
    assert "no Supabase platform backup of abcdefghijklmnopqrst completed in the last 26h" in data["message"]
    assert expected in data["detail"]
    # once one completes, the alert clears
    api.set_backups(REF, [backup("COMPLETED", iso(NOW - timedelta(hours=1)) or "")])
    supabase_job(rt)
    assert events[-1] == ("supabase.resolved", {"kind": "supabase", "target": REF})


def test_the_api_being_down_is_reported_never_raised(make_services, api):
    api.set_backups(REF, [backup("COMPLETED", iso(NOW - timedelta(hours=1)) or "")])
    rt, events = setup(make_services, api)
    api.fail_with(503)
    status = supabase_job(rt)
    assert status is not None and not status.available
    assert status.summary(rt.sched.tz) == "Supabase Management API unavailable: HTTP 503"
    section = status_section(rt.services, NOW)
    assert section is not None and not section.ok and "unavailable" in section.lines[0]
    assert [e for e, _d in events] == ["supabase.alert"] and events[0][1]["target"] == f"{REF} (API)"
    # unreachable altogether: still a report, not an exception
    api.stop()
    status = supabase_job(rt)
    assert status is not None and status.error and "cannot reach" in status.error
    assert [(a.kind, a.target) for a in Alerts(rt.services.catalog).open_alerts()] == [("supabase", f"{REF} (API)")]


def test_a_wrong_token_says_which_setting_to_check(make_services, api):
    api.set_backups(REF, [])
    rt, _events = setup(make_services, api, token="sbp_not0the0right0token")
    status = supabase_job(rt)
    assert status is not None and status.error == "HTTP 401 (check SUPABASE_ACCESS_TOKEN)"
