"""Every backup message builder stays within Slack's Block Kit limits, for ordinary and extreme
inputs alike, and always carries a plain-text fallback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.core.alerts import Alert
from bot.core.catalog import Backup, Copy
from bot.core.status import SizePoint, StatusReport, StatusSection, TargetStatus
from bot.render import backup as r
from bot.render.common import to_text
from tests.fakes.slack_api import validate_blocks

TZ = ZoneInfo("Europe/Berlin")
NOW = datetime(2024, 5, 2, 6, 30, tzinfo=UTC)
HUGE = "x" * 10_000  # longer than any Slack text limit


def make_backup(i: int = 0, *, error: str | None = None, verify: str = "ok", target: str = "prod") -> Backup:
    created = NOW - timedelta(days=i, hours=4)
    copies = [Copy("local", f"/var/backups/{target}/b{i}.dump.zst", "stored", 123_456)]
    if error is not None:
        copies.append(Copy("s3", "", "failed", None, error=error))
    return Backup(id=f"{target}-20240502-020000-{i:04x}", target=target, status="complete", kind="manual",
                  created_at=created, finished_at=created + timedelta(seconds=42), duration_s=42.0,
                  size_bytes=123_456_789, sha256="ab" * 32, compression="zstd", encryption_key_id=None,
                  server_version="16.2", pg_dump_version="16.2", database="crm", profile="plain",
                  object_key="k", verify_status=verify, verified_at=None, copies=copies,
                  manifest={"database_size_bytes": 900_000_000 + i})


def make_alert(kind: str = "backup", *, message: str = "cannot connect to 127.0.0.1:5432/crm",
               detail: str = "pg_dump: error: connection refused", count: int = 1, resolved: bool = False) -> Alert:
    return Alert(id=7, kind=kind, target="prod", message=message, detail=detail, hint="check the server",
                 opened_at=NOW - timedelta(hours=3), last_notified_at=None,
                 resolved_at=NOW if resolved else None, slack_ts="1700000000.000100", count=count)


def make_report(*, alerts: int = 1, targets: int = 1, sections: int = 1, db_error: bool = False) -> StatusReport:
    ts = [TargetStatus(name=f"t{i}", last_good_id=f"t{i}-20240502-020000-abcd", last_good_at=NOW - timedelta(hours=4),
                       age_s=4 * 3600, stale=False, last_good_size=123_456, last_good_verified="ok",
                       database_size_bytes=None if db_error else 950_000_000,
                       database_size_error="connection refused" if db_error else None,
                       trend=[SizePoint(NOW - timedelta(days=9), 900_000_000), SizePoint(NOW, 940_000_000)])
          for i in range(targets)]
    return StatusReport(generated_at=NOW, targets=ts, next_run="2024-05-03T00:00:00Z",
                        retention={"daily": 7, "weekly": 4, "monthly": 3, "min_verified": 3},
                        storage={"local:/var/backups": {"used": 10**9, "free": 5 * 10**9}, "s3://b/p": {"used": None, "free": None}},
                        alerts=[make_alert(message=f"problem {i}") for i in range(alerts)],
                        sections=[StatusSection(f"extra {i}", ["line one", "line two"], ok=i % 2 == 0)
                                  for i in range(sections)])


CASES: list[tuple[str, Any]] = [
    ("started", lambda: r.started_message("prod")),
    ("busy with link", lambda: r.busy_message("prod", link="https://x.slack.com/archives/C1/p1", tz=TZ,
                                              run={"started_at": "2024-05-02T04:00:00Z", "actor": "U0ALICE", "source": "slack"})),
    ("busy from the CLI", lambda: r.busy_message("prod", link=None, tz=TZ,
                                                 run={"started_at": "now", "actor": "root", "source": "cli"})),
    ("busy, holder unknown", lambda: r.busy_message("prod", link=None, run=None, tz=TZ)),
    ("progress start", lambda: r.progress_message("prod", actor="U0ALICE", written=0, elapsed_s=0)),
    ("progress", lambda: r.progress_message("prod", actor="U0ALICE", written=12_345_678, elapsed_s=95)),
    ("result", lambda: r.result_message(make_backup(), failed_copies={}, tz=TZ, actor="U0ALICE")),
    ("result with failed copy", lambda: r.result_message(make_backup(error="bucket missing"),
                                                         failed_copies={"s3": "bucket missing"}, tz=TZ, actor="U0ALICE")),
    ("result with huge copy error", lambda: r.result_message(make_backup(error=HUGE), failed_copies={"s3": HUGE},
                                                             tz=TZ, actor="scheduler")),
    ("failure", lambda: r.failure_message("prod", error="cannot connect", detail="FATAL: no", elapsed_s=1.5, actor="U0A")),
    ("failure with huge detail", lambda: r.failure_message("prod", error=HUGE, detail=HUGE + "```", elapsed_s=None, actor="U0A")),
    ("empty list", lambda: r.list_message([], tz=TZ, target="prod")),
    ("list", lambda: r.list_message([make_backup(i) for i in range(5)], tz=TZ, target="prod")),
    ("list of every target", lambda: r.list_message([make_backup(i, target=f"t{i}") for i in range(3)], tz=TZ, target=None)),
    ("list longer than a message allows", lambda: r.list_message([make_backup(i) for i in range(200)], tz=TZ, target="prod")),
    ("status", lambda: r.status_message(make_report(), TZ)),
    ("status, database down, no alerts", lambda: r.status_message(make_report(alerts=0, db_error=True), TZ)),
    ("status with many targets, alerts and sections", lambda: r.status_message(
        make_report(alerts=60, targets=40, sections=30), TZ)),
    ("alert", lambda: r.alert_message(make_alert(), mentions=("U0ONCALL", "S0DBA"), runbook_url="https://wiki/runbook",
                                      tz=TZ, retry=r.retry_value(make_alert()))),
    ("alert repeated without extras", lambda: r.alert_message(make_alert(count=3, detail=""), mentions=(),
                                                              runbook_url=None, tz=TZ, retry=None, repeat=True)),
    ("alert with huge texts", lambda: r.alert_message(make_alert("mystery", message=HUGE, detail=HUGE), mentions=("U1",) * 50,
                                                      runbook_url="https://wiki/" + "r" * 100, tz=TZ, retry="{}")),
    ("resolved alert", lambda: r.resolved_alert_message(make_alert(resolved=True), tz=TZ)),
    ("recovery after a backup", lambda: r.recovery_message(make_alert(resolved=True), tz=TZ, backup=make_backup())),
    ("recovery with a note", lambda: r.recovery_message(make_alert("stale", resolved=True), tz=TZ, note="fresh <again>")),
]


@pytest.mark.parametrize("name, build", CASES, ids=[c[0] for c in CASES])
def test_message_is_valid_block_kit_with_fallback_text(name: str, build: Any) -> None:
    # GIVEN a builder's output WHEN validated like Slack does THEN nothing is rejected
    msg = build()
    assert validate_blocks(msg["blocks"]) == []
    assert msg["text"].strip() and len(msg["text"]) <= 3000
    assert to_text(msg["blocks"]).strip()


def test_result_shows_size_duration_checksum_prefix_and_every_copy() -> None:
    msg = r.result_message(make_backup(error="bucket missing"), failed_copies={"s3": "bucket missing"}, tz=TZ, actor="U0A")
    shown = to_text(msg["blocks"])
    assert "117.7 MB" in shown and "42s" in shown and "`abababababab…`" in shown
    assert "local" in shown and "s3" in shown and "✗ failed" in shown and "bucket missing" in shown


def test_list_shows_times_in_the_configured_zone_and_caps_at_the_block_limit() -> None:
    msg = r.list_message([make_backup(i) for i in range(200)], tz=TZ, target="prod")
    assert "CEST" in to_text(msg["blocks"])
    assert len(msg["blocks"]) == r.LIST_MAX + 2


def test_busy_message_shows_when_the_running_backup_started_in_the_configured_zone() -> None:
    # GIVEN a run the catalog recorded at 04:00 UTC WHEN the busy answer is rendered for Berlin
    msg = r.busy_message("prod", link=None, tz=TZ,
                         run={"started_at": "2024-05-02T04:00:00.123Z", "actor": "U0ALICE", "source": "cli"})
    # THEN both the text and the blocks give the local time with its zone, not the raw UTC stamp
    for shown in (msg["text"], to_text(msg["blocks"])):
        assert "started 2024-05-02 06:00 CEST by" in shown and "T04:00" not in shown
    # AND it names what holds the target: a backup, a restore over it, or either when unknown
    assert r.busy_message("prod", link=None, tz=TZ, run=None)["text"].startswith("A backup or restore of prod")
    restore = r.busy_message("prod", link=None, tz=TZ, run={"kind": "restore", "started_at": "2024-05-02T04:00:00Z",
                                                            "actor": "U0BOB", "source": "slack"})
    assert restore["text"].startswith("A restore over prod is already running")


def test_status_running_now_line_is_in_the_configured_zone() -> None:
    report = make_report()
    report.targets[0].running = {"started_at": "2024-05-02T04:00:00.000Z", "actor": "U0ALICE", "source": "slack"}
    shown = to_text(r.status_message(report, TZ)["blocks"])
    assert "*Running now*: since 2024-05-02 06:00 CEST by <@U0ALICE>" in shown and "T04:00" not in shown
    assert "Running now: since 2024-05-02 06:00 CEST" in r.status_text(report, TZ)


def test_empty_list_says_how_to_make_the_first_backup() -> None:
    shown = to_text(r.list_message([], tz=TZ, target="prod")["blocks"])
    assert "`/backup now`" in shown and "`backupbot backup`" in shown


def test_alert_mentions_users_and_groups_and_links_the_runbook() -> None:
    msg = r.alert_message(make_alert(), mentions=("U0ONCALL", "S0DBA"), runbook_url="https://wiki/runbook", tz=TZ,
                          retry=r.retry_value(make_alert()))
    assert "<@U0ONCALL>" in msg["text"] and "<!subteam^S0DBA>" in msg["text"]
    assert "<https://wiki/runbook|" in to_text(msg["blocks"])
    buttons = [e for b in msg["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == [r.RETRY_ACTION]


def test_detail_cannot_break_out_of_its_code_block() -> None:
    msg = r.failure_message("prod", error="e", detail="```<!channel>", elapsed_s=1, actor="U0A")
    shown = to_text(msg["blocks"])
    assert "<!channel>" not in shown and shown.count("```") == 2


def test_status_text_for_the_cli_has_no_slack_markup() -> None:
    text = r.status_text(make_report(db_error=True), TZ)
    assert "Last good backup: t0-20240502-020000-abcd" in text
    assert "Database size now: ! unavailable: connection refused" in text
    assert ":warning:" not in text and "`" not in text


def test_status_keeps_its_footer_within_the_block_limit_for_many_targets() -> None:
    msg = r.status_message(make_report(alerts=2, targets=40, sections=30), TZ)
    assert len(msg["blocks"]) <= 50 and msg["blocks"][-1]["type"] == "context"
    assert "Schedule and storage" in to_text(msg["blocks"])
