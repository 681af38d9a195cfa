"""The dead-man's switch and the daily metrics, with an injected clock: alerts fire once past the
threshold, repeat at the interval, clear after a good backup; growth and low disk alert."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.core.alerts import Alerts
from bot.core.catalog import Catalog, Copy, iso
from bot.core.monitoring import Monitor, status_section
from bot.core.schedule_settings import ScheduleSettings
from bot.services import Services

T0 = datetime(2024, 6, 3, 0, 0, tzinfo=UTC)
_ids = itertools.count(1)


def add_backup_row(catalog: Catalog, target: str, created_at: datetime) -> str:
    """A complete backup as the catalog records it (no dump needed: the switch reads the catalog)."""
    backup_id = f"{target}-{created_at:%Y%m%d-%H%M%S}-{next(_ids):04d}"
    catalog.add_backup({"id": backup_id, "target": target, "status": "complete", "kind": "scheduled",
                        "created_at": iso(created_at), "sha256": "0" * 64, "size_bytes": 1234,
                        "object_key": f"{target}/{backup_id}.dump.zst", "verify_status": "ok"},
                       [Copy("local", f"/backups/{backup_id}", "stored", 1234)])
    return backup_id


class Events:
    """A listener on services.emit, as commands/alerts.py is in the bot."""

    def __init__(self, services: Services) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        services.listeners.append(lambda event, data: self.seen.append((event, data)))

    def names(self) -> list[str]:
        return [e for e, _d in self.seen]

    def clear(self) -> None:
        self.seen.clear()


def monitor_for(make_settings: Any, **env: str) -> tuple[Services, Monitor, Events]:
    settings = make_settings("postgresql://app:pw@127.0.0.1:1/crm", **env)
    services = Services(settings)
    return services, Monitor(services, ScheduleSettings.from_settings(settings)), Events(services)


def test_deadmans_switch_fires_once_repeats_at_the_interval_and_clears_after_a_good_backup(make_settings):
    # GIVEN the newest good backup of prod was taken at T0; MAX_BACKUP_AGE 26h, repeat every 6h
    services, monitor, events = monitor_for(make_settings, MAX_BACKUP_AGE="26h", STALE_ALERT_REPEAT="6h")
    add_backup_row(services.catalog, "prod", T0)
    # WHEN checked every 15 minutes from 25h to 39h after it
    fired_at = []
    for quarter in range(25 * 4, 39 * 4 + 1):
        now = T0 + timedelta(minutes=15 * quarter)
        events.clear()
        monitor.check_stale(now)
        fired_at += [now - T0 for e in events.names() if e == "stale.alert"]
    # THEN the alert fires once just past 26h, then every 6h while it lasts
    assert fired_at == [timedelta(hours=26, minutes=15), timedelta(hours=32, minutes=15),
                        timedelta(hours=38, minutes=15)]
    alerts = Alerts(services.catalog).open_alerts()
    assert [(a.kind, a.target) for a in alerts] == [("stale", "prod")]
    assert alerts[0].message == "no good backup of prod for 38h 15m"  # as last announced
    # WHEN a good backup appears
    now = T0 + timedelta(hours=39, minutes=10)
    add_backup_row(services.catalog, "prod", now - timedelta(minutes=5))
    events.clear()
    monitor.check_stale(now)
    monitor.check_stale(now + timedelta(minutes=15))
    # THEN one recovery, and the alert is closed
    assert events.seen == [("stale.resolved", {"kind": "stale", "target": "prod"})]
    assert Alerts(services.catalog).open_alerts() == []


def test_alert_event_carries_what_the_slack_side_needs(make_settings):
    services, monitor, events = monitor_for(make_settings)
    add_backup_row(services.catalog, "prod", T0)
    monitor.check_stale(T0 + timedelta(hours=30))
    (event, data), = events.seen
    assert event == "stale.alert"
    assert set(data) == {"kind", "target", "message", "detail", "hint"}
    assert data["kind"] == "stale" and data["target"] == "prod" and "MAX_BACKUP_AGE=26h 00m" in data["detail"]


def test_a_never_backed_up_target_alerts_only_once_the_catalog_is_older_than_the_limit(make_settings):
    services, monitor, events = monitor_for(make_settings)
    installed = monitor.installed_at()
    assert installed is not None
    monitor.check_stale(installed + timedelta(hours=25))
    assert events.names() == []
    monitor.check_stale(installed + timedelta(hours=27))
    assert events.names() == ["stale.alert"]
    assert "never been backed up" in events.seen[0][1]["message"]


def test_growth_beyond_the_threshold_alerts_and_a_calm_day_resolves(make_settings):
    sizes = iter([1_000_000, 1_300_000, 1_310_000])
    settings = make_settings("postgresql://app:pw@127.0.0.1:1/crm", DB_GROWTH_ALERT_PERCENT="20",
                             DISK_FREE_MIN="0")
    services = Services(settings)
    monitor = Monitor(services, ScheduleSettings.from_settings(settings), measure_size=lambda _url: next(sizes))
    events = Events(services)
    monitor.record(T0 + timedelta(hours=6))
    monitor.record(T0 + timedelta(days=1, hours=6))  # +30%
    assert events.names() == ["growth.alert"]
    assert "grew 30.0% in a day" in events.seen[0][1]["message"]
    monitor.record(T0 + timedelta(days=2, hours=6))  # +0.8%
    assert events.names() == ["growth.alert", "growth.resolved"]
    rows = monitor.metrics("prod")
    assert [(m.day.isoformat(), m.database_size) for m in rows] == [
        ("2024-06-05", 1_310_000), ("2024-06-04", 1_300_000), ("2024-06-03", 1_000_000)]
    assert rows[0].free_disk_bytes and rows[0].storage_used  # free disk and storage per destination


def test_low_disk_alerts_and_clears_when_space_is_back(make_settings):
    services, monitor, events = monitor_for(make_settings, DISK_FREE_MIN="1000000TB")
    monitor.measure_size = lambda _url: 1
    monitor.record(T0)
    assert events.names() == ["disk.alert"] and "free for local backups" in events.seen[0][1]["message"]
    relaxed = Monitor(services, ScheduleSettings.from_settings(
        make_settings("postgresql://app:pw@127.0.0.1:1/crm", DISK_FREE_MIN="1%")), measure_size=lambda _u: 1)
    relaxed.record(T0 + timedelta(days=1))
    assert events.names() == ["disk.alert", "disk.resolved"]


def test_an_unreachable_database_is_recorded_not_raised_and_status_shows_the_metrics(make_settings):
    services, monitor, events = monitor_for(make_settings)
    (m,) = monitor.record(T0)  # the URL points at a closed port
    assert m.database_size is None and m.error
    section = status_section(services, T0)
    assert section.title == "Monitoring"
    assert any(line.startswith("local disk:") for line in section.lines)
    # AND the status needs attention even with a fresh good backup: the next backup would fail
    from bot.core.status import gather_status

    add_backup_row(services.catalog, "prod", T0)
    report = gather_status(services, now=T0 + timedelta(hours=1), sections=[])
    assert report.targets[0].database_size_error and not report.targets[0].stale
    assert report.ok is False


def test_a_backup_landing_during_the_switchs_check_leaves_no_stale_alert_open(make_settings):
    """The scheduler's check and a finished backup's recovery check run on different threads."""
    import threading

    # GIVEN prod's newest good backup is 30h old (limit 26h), and the scheduler's check has just
    # read that from the catalog (it is held there until released)
    services, monitor, events = monitor_for(make_settings, MAX_BACKUP_AGE="26h")
    add_backup_row(services.catalog, "prod", T0)
    now = T0 + timedelta(hours=30)
    read, release = threading.Event(), threading.Event()
    real_latest_good = services.catalog.latest_good

    def latest_good(target: str, now: datetime | None = None) -> Any:
        found = real_latest_good(target, now)
        if threading.current_thread().name == "deadman" and not read.is_set():
            read.set()
            assert release.wait(10)
        return found

    services.catalog.latest_good = latest_good  # type: ignore[method-assign]
    deadman = threading.Thread(target=monitor.check_stale, args=(now,), name="deadman")
    deadman.start()
    assert read.wait(10)
    # WHEN a good backup lands then, and its recovery check runs (finding no alert to clear)
    add_backup_row(services.catalog, "prod", now)
    recovery = monitor.check_stale(now, ["prod"])
    assert not recovery[0].stale and not recovery[0].resolved
    # AND the scheduler's check goes on from what it read
    release.set()
    deadman.join(10)
    assert not deadman.is_alive()
    # THEN the alert it raised from the outdated read is resolved at once, and none stays open
    assert events.names() == ["stale.alert", "stale.resolved"]
    assert Alerts(services.catalog).open_alerts() == []


def test_resolving_only_a_given_alert_about_a_given_backup(tmp_path):
    """What a Retry on a pruned backup's alert relies on: checked and closed in one transaction."""
    catalog = Catalog(tmp_path / "c.db")
    alerts = Alerts(catalog)
    alert, _new = alerts.raise_("verify", "prod", "backup prod-B failed verification: checksum mismatch")
    # another alert's id, or a message about another backup: left open
    assert alerts.resolve("verify", "prod", alert_id=alert.id + 1) is None
    assert alerts.resolve("verify", "prod", alert_id=alert.id, about="prod-A") is None
    assert alerts.resolve("verify", "prod", alert_id=alert.id, about="prod-") is None  # a whole id, not a prefix
    assert [a.id for a in alerts.open_alerts()] == [alert.id]
    # this alert, about this backup: closed
    assert alerts.resolve("verify", "prod", alert_id=alert.id, about="prod-B").id == alert.id
    assert alerts.open_alerts() == []
    # and only a backup retention deleted counts as deleted
    add_backup_row(catalog, "prod", T0)
    kept = add_backup_row(catalog, "prod", T0 + timedelta(hours=1))
    catalog.mark_deleted(kept)
    assert catalog.was_deleted(kept) and not catalog.was_deleted("prod-never-existed")


def test_a_backup_stamped_in_the_future_does_not_silence_the_switch(make_settings):
    # GIVEN the last real backup at T0, and one from a host whose clock runs 5 days ahead
    services, monitor, events = monitor_for(make_settings, MAX_BACKUP_AGE="26h", STALE_ALERT_REPEAT="6h")
    real = add_backup_row(services.catalog, "prod", T0)
    add_backup_row(services.catalog, "prod", T0 + timedelta(days=5, hours=8))
    now = T0 + timedelta(hours=27)
    # WHEN the switch checks, 27 hours after the last real backup
    monitor.check_stale(now)
    # THEN it alerts about the real one; the future stamp is no 'good backup'
    assert "stale.alert" in events.names()
    assert services.catalog.latest_good("prod", now).id == real  # type: ignore[union-attr]
    # AND a stamp a few minutes ahead (ordinary clock skew) still counts, with an age of zero
    from bot.core.status import gather_status

    near = add_backup_row(services.catalog, "prod", now + timedelta(minutes=2))
    assert services.catalog.latest_good("prod", now).id == near  # type: ignore[union-attr]
    events.clear()
    monitor.check_stale(now)
    assert events.names() == ["stale.resolved"]
    report = gather_status(services, now=now, check_database=False)
    assert report.targets[0].last_good_id == near and report.targets[0].age_s == 0
