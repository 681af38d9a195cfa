"""`/backup list` and `/backup status` (and `backupbot status`) show the catalog and the database
as they are, in the configured time zone, and answer even when the database is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bot.core.alerts import Alerts
from bot.core.cluster import free_port
from bot.render.common import human_bytes, local_time, to_text
from tests.fixtures.pg import PASSWORD


def test_empty_list_says_how_to_make_the_first_backup(slack_app):
    h = slack_app()
    shown = h.command("list").responses()[0]
    assert shown["response_type"] == "ephemeral"
    text = to_text(shown["blocks"])
    assert "No backups of any target yet" in text and "`/backup now`" in text and "`backupbot backup`" in text


def test_list_shows_id_local_time_size_verified_state_and_copies(slack_app):
    # GIVEN a backup and a time zone other than UTC
    h = slack_app(BACKUP_TIMEZONE="America/New_York")
    backup = h.services.backup(actor="t", source="cli").backup
    # WHEN listing THEN its id, local time, size, verification state and copies show
    shown = to_text(h.command("list").responses()[0]["blocks"])
    assert backup.id in shown and local_time(backup.created_at, h.ctx.settings.tz) in shown
    assert "America/New_York" in shown and human_bytes(backup.size_bytes) in shown
    assert "not verified yet" in shown and "copies: local ✓" in shown
    # AND once verified, the list says so
    h.services.verify(backup.id, actor="t", source="cli")
    assert ":white_check_mark: verified" in to_text(h.command("list prod").responses()[0]["blocks"])


def test_list_count_limits_how_many_backups_show(slack_app):
    h = slack_app()
    made = {h.services.backup(actor="t", source="cli").backup.id for _ in range(3)}
    one = h.command("list prod 1").responses()[0]["blocks"]
    two = h.command("list 2").responses()[0]["blocks"]
    ids = lambda blocks: {i for i in made if i in to_text(blocks)}  # noqa: E731
    assert len(ids(one)) == 1 and len(ids(two)) == 2


def test_malformed_count_or_extra_words_get_usage(slack_app):
    h = slack_app()
    for text in ("list prod ten", "list prod 0", "list prod 5 more", "list prod 999", "list prod ²"):
        shown = h.command(text).responses()[0]
        assert shown["response_type"] == "ephemeral" and "Usage" in shown["text"], text
        assert "/backup list [target] [N]" in json.dumps(shown) and "invalid literal" not in json.dumps(shown)
    assert "invalid literal" not in json.dumps(h.command("audit ²", user="U0OPS").responses()[0])
    unknown = h.command("list staging").responses()[0]
    assert "unknown target 'staging' (known targets: prod)" in unknown["text"]
    assert "unknown target '²'" in h.command("list ²").responses()[0]["text"]  # not a count: a name


def test_status_shows_last_backup_schedule_retention_storage_size_trend_and_alerts(slack_app):
    # GIVEN two backups, an open alert, and a scheduler that knows the next run
    h = slack_app(BACKUP_TIMEZONE="Europe/Berlin", RETENTION_DAILY="5")
    h.services.backup(actor="t", source="cli")
    h.services.backup(actor="t", source="cli")
    last = h.services.catalog.latest_good("prod")
    Alerts(h.services.catalog).raise_("verify", "prod", "backup X failed verification")
    h.ctx.next_run = lambda: "2030-01-01T01:00:00Z"
    # WHEN someone asks for the status
    shown = h.command("status").responses()[0]
    text = to_text(shown["blocks"])
    # THEN every part of the report is there, in the configured time zone
    assert shown["response_type"] == "ephemeral"
    assert f"`{last.id}`" in text and "ago" in text
    assert "*Next scheduled run*: 2030-01-01 02:00 CET" in text
    assert "each hour of the last 24h · 5 daily · 4 weekly · 3 monthly" in text
    assert f"{h.ctx.settings.backup_dir}: " in text and " used, " in text and " free" in text
    assert "*Database size now*: " in text and "unavailable" not in text
    assert "over" in text and "(2 backups)" in text  # the trend from the manifests
    assert "backup X failed verification" in text


def test_status_reports_a_down_database_instead_of_failing(slack_app):
    # GIVEN a target whose server does not answer
    h = slack_app(database_url=f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/crm")
    # WHEN asked for the status THEN it answers, saying the size is unavailable
    text = to_text(h.command("status").responses()[0]["blocks"])
    assert "*Database size now*: :warning: unavailable" in text and "no backup yet" in text
    assert PASSWORD not in text


def test_cli_status_json_has_the_same_report(crm_db, make_services, tmp_path):
    # GIVEN a backup made through the core
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    env = {**os.environ, "DATABASE_URL": crm_db, "BACKUP_TARGET": "prod", "BACKUP_DIR": str(tmp_path / "backups"),
           "BACKUPBOT_DB": str(tmp_path / "catalog.db")}
    # WHEN `backupbot status --json` runs THEN it reports that backup and the database size
    out = subprocess.run([sys.executable, "-m", "bot", "status", "--json"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    [target] = report["targets"]
    assert target["last_good_backup"]["id"] == backup.id and target["database_size_bytes"] > 0
    assert report["retention"]["daily"] == 7 and report["open_alerts"] == []
    plain = subprocess.run([sys.executable, "-m", "bot", "status"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0 and f"Last good backup: {backup.id}" in plain.stdout
    assert PASSWORD not in out.stdout + plain.stdout
    # AND a schedule setting `backupbot run` would refuse is one clear line and exit 2 here too
    bad = subprocess.run([sys.executable, "-m", "bot", "status"], env={**env, "CHECKLIST_TIME": "9am"},
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == "", bad.stdout
    assert bad.stderr.strip().splitlines() == [
        "error: invalid configuration: '9am' is not a time like 09:00 (24-hour, or off) (CHECKLIST_TIME)"]


def test_extra_status_sections_are_shown_and_a_broken_one_is_reported(slack_app, monkeypatch):
    # GIVEN two sections registered by other features, one of which breaks
    from bot.core import status

    def schedules(source, now):
        return status.StatusSection("Schedules", [f"prod: daily at 02:00 ({len(source.settings.targets)} target)"])

    def broken(source, now):
        raise RuntimeError("monitoring store unavailable")

    monkeypatch.setattr(status, "STATUS_SECTIONS", [schedules, broken])
    h = slack_app()
    # WHEN someone asks for the status THEN both show, the broken one as a warning, and all else is there
    text = to_text(h.command("status").responses()[0]["blocks"])
    assert "*Schedules*\nprod: daily at 02:00 (1 target)" in text
    assert ":warning: broken*\ncould not gather: monitoring store unavailable" in text
    assert "*Last good backup*: none" in text
