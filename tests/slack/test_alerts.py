"""Failure alerts in SLACK_CHANNEL: what failed, for which target, the error's tail with secrets
redacted, who is mentioned, the runbook, a Retry button for operators, and a recovery message."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from bot.core.alerts import Alerts
from bot.core.cluster import free_port
from bot.errors import BackupbotError
from bot.render.backup import RETRY_ACTION
from bot.render.common import to_text
from tests.fixtures.pg import PASSWORD, fake_bindir
from tests.fixtures.slack import BOT_TOKEN, CHANNEL
from tests.slack.support import buttons, everything_sent, gated_bindir, until, wait_for_message

RUNBOOK = "https://wiki.example.com/runbooks/backups"

# pg_dump that fails the way a real one can: a multi-line stderr, one line echoing a conninfo.
FAILING_PG_DUMP = """#!/bin/sh
if [ "$1" = "--version" ]; then exec "@REAL@/pg_dump" --version; fi
echo "pg_dump: reading schemas" >&2
echo "pg_dump: connecting with host=127.0.0.1 password=$PGPASSWORD" >&2
echo "pg_dump: error: query failed: ERROR:  out of shared memory" >&2
exit 1
"""


def test_failed_backup_alerts_with_mentions_runbook_and_retry_and_leaks_no_secret(slack_app, caplog):
    caplog.set_level(logging.DEBUG)
    # GIVEN a target whose server is down, on-call mentions and a runbook
    h = slack_app(database_url=f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/crm",
                  ALERT_MENTIONS="U0ONCALL,S0DBA", RUNBOOK_URL=RUNBOOK)
    # WHEN an operator runs /backup now
    h.command("now")
    # THEN the progress message ends as the failure
    failed = wait_for_message(h.fake, CHANNEL, "Backup of prod failed")
    assert "cannot connect to 127.0.0.1" in failed["text"]
    # AND an alert says what failed and for which target, mentions on-call, links the runbook
    alert = wait_for_message(h.fake, CHANNEL, "Backup failed for prod")
    assert "<@U0ONCALL>" in alert["text"] and "<!subteam^S0DBA>" in alert["text"]
    shown = to_text(alert["blocks"])
    assert "cannot connect to 127.0.0.1" in shown and "`prod`" in shown and f"<{RUNBOOK}|" in shown
    [retry] = buttons(alert)
    assert retry["action_id"] == RETRY_ACTION and json.loads(retry["value"])["target"] == "prod"
    # AND the alert is open in the catalog, linked to its message
    [open_alert] = Alerts(h.services.catalog).open_alerts("prod")
    assert open_alert.kind == "backup" and open_alert.slack_ts == alert["ts"]
    # AND neither the database password nor the bot token is in any message or log line
    sent = everything_sent(h.fake)
    assert PASSWORD not in sent and BOT_TOKEN not in sent
    assert PASSWORD not in caplog.text and BOT_TOKEN not in caplog.text
    assert h.fake.warnings == []


def test_alert_shows_the_error_tail_with_the_password_redacted(slack_app, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    # GIVEN a pg_dump that fails and echoes its password on stderr
    h = slack_app(PG_BINDIR=str(fake_bindir(tmp_path, {"pg_dump": FAILING_PG_DUMP})))
    # WHEN a backup fails
    with pytest.raises(BackupbotError):
        h.services.backup(actor="scheduler", source="schedule", kind="scheduled")
    # THEN the alert carries the useful tail, with the password masked
    alert = wait_for_message(h.fake, CHANNEL, "Backup failed for prod")
    shown = to_text(alert["blocks"])
    assert "out of shared memory" in shown and "password=***" in shown
    assert PASSWORD not in everything_sent(h.fake) and PASSWORD not in caplog.text


def test_retry_is_for_operators_starts_one_backup_and_recovery_follows(slack_app, pg, tmp_path):
    # GIVEN a backup that failed because its database is missing, and an operator list
    name = f"later_{uuid.uuid4().hex[:8]}"
    bindir, gate = gated_bindir(tmp_path)
    h = slack_app(database_url=pg.url(name), BACKUP_OPERATORS="U0OPS", PG_BINDIR=str(bindir))
    with pytest.raises(BackupbotError):
        h.services.backup(actor="scheduler", source="schedule", kind="scheduled")
    alert = wait_for_message(h.fake, CHANNEL, "Backup failed for prod")
    # WHEN someone who is not an operator presses Retry THEN they are told no, and nothing runs
    h.click(CHANNEL, alert["ts"], RETRY_ACTION, "U0EVE", response_url=h.fake.response_url("eve"))
    refused = h.fake.wait_for_response("eve")[0].body
    assert "Only backup operators" in refused["text"] and refused["response_type"] == "ephemeral"
    # and the refusal is in the audit log, with what was pressed
    [audited] = h.services.catalog.audit_events(action="slack.refused")
    assert audited["actor"] == "U0EVE" and RETRY_ACTION in str(audited["details"]), audited
    assert h.services.running("prod") is None
    # WHEN the database is back and an operator double-clicks Retry
    pg.create_database(name)
    try:
        for rid in ("ops-1", "ops-2"):
            h.click(CHANNEL, alert["ts"], RETRY_ACTION, "U0OPS", response_url=h.fake.response_url(rid))
        answers = sorted(r.body["text"] for rid in ("ops-1", "ops-2") for r in h.fake.wait_for_response(rid))
        # THEN exactly one backup starts; the other click is told it is running
        assert answers[0].startswith("A backup of prod is already running") and answers[1].startswith("Started")
    finally:
        gate.touch()
    wait_for_message(h.fake, CHANNEL, "Backup of prod complete")
    assert len(h.services.list_backups()) == 1
    assert h.services.catalog.audit_events(action="backup.start")[0]["actor"] == "U0OPS"
    # AND the recovery is posted in the alert's thread and the alert loses its Retry button
    replies = until(lambda: [m for m in h.fake.replies(CHANNEL, alert["ts"]) if "Recovered" in m["text"]],
                    what="the recovery reply")
    assert h.services.list_backups()[0].id in replies[0]["text"]
    parent = h.fake.message(CHANNEL, alert["ts"])
    assert parent["text"].startswith("Resolved") and buttons(parent) == []
    assert Alerts(h.services.catalog).open_alerts() == []
    assert h.fake.warnings == []


def test_failed_copy_raises_an_upload_alert_resolved_by_the_next_complete_backup(slack_app, s3_server, s3_client):
    # GIVEN an S3 destination whose bucket does not exist yet
    bucket = "later-bucket-" + uuid.uuid4().hex[:8]
    h = slack_app(S3_BUCKET=bucket, S3_ENDPOINT_URL=s3_server, S3_REGION="us-east-1")
    # WHEN a backup is stored locally but not in S3 THEN an upload alert with Retry is posted
    h.services.backup(actor="scheduler", source="schedule", kind="scheduled")
    alert = wait_for_message(h.fake, CHANNEL, "A backup copy failed to upload")
    assert "the copy to s3 failed" in alert["text"] and "local" in alert["text"]
    assert [b["action_id"] for b in buttons(alert)] == [RETRY_ACTION]
    # WHEN the bucket exists and the next backup stores every copy THEN the alert recovers
    s3_client.create_bucket(Bucket=bucket)
    h.services.backup(actor="scheduler", source="schedule", kind="scheduled")
    assert any("Recovered" in m["text"] for m in h.fake.replies(CHANNEL, alert["ts"]))
    assert Alerts(h.services.catalog).open_alerts() == []


def test_generic_alert_events_are_posted_repeated_in_thread_and_resolved(slack_app):
    # GIVEN the app, and another feature that reports a stale backup through the core's events
    h = slack_app(ALERT_MENTIONS="U0ONCALL")
    emit = h.services.emit
    # WHEN it reports the problem, then (its repeat interval having passed) reports it again
    emit("stale.alert", target="prod", kind="stale", message="no backup for 30h", hint="is the scheduler running?")
    emit("stale.alert", target="prod", kind="stale", message="no backup for 36h")
    # THEN one alert is posted, with a Retry that takes a backup, and the repeat goes in its thread
    [alert] = [m for m in h.fake.messages(CHANNEL) if "No recent backup" in m["text"]]
    assert "<@U0ONCALL>" in alert["text"] and "is the scheduler running?" in to_text(alert["blocks"])
    assert json.loads(buttons(alert)[0]["value"])["kind"] == "stale"
    [repeat] = h.fake.replies(CHANNEL, alert["ts"])
    assert "no backup for 36h" in repeat["text"]
    # WHEN it reports the problem resolved THEN a recovery appears in the alert's thread
    emit("stale.resolved", target="prod", kind="stale", message="a backup is 2 minutes old")
    replies = h.fake.replies(CHANNEL, alert["ts"])
    assert "Recovered" in replies[-1]["text"] and "a backup is 2 minutes old" in replies[-1]["text"]
    assert Alerts(h.services.catalog).open_alerts() == []


@pytest.mark.parametrize("event, data, kind, title, retry", [
    ("prune.failed", {"error": "s3: AccessDenied"}, "retention", "Retention (pruning old backups) failed", True),
    ("restore.failed", {"backup_id": "prod-1", "error": "pg_restore failed", "safety_backup": "prod-0"},
     "restore", "Restore failed", False),
    ("drill.failed", {"error": "restored rows differ"}, "drill", "Restore drill failed", False),
    ("disk.alert", {"kind": "disk", "message": "92% used", "hint": "raise the volume"}, "disk",
     "Backup storage is running out of space", False),
], ids=["retention", "restore", "other failure", "generic alert"])
def test_every_failure_event_opens_its_kind_of_alert(slack_app, event, data, kind, title, retry):
    # GIVEN the app WHEN a feature reports a failure through the core's events
    h = slack_app()
    h.services.emit(event, target="prod", **data)
    # THEN an alert of the matching kind is open and posted, with Retry only where it is safe
    [alert] = Alerts(h.services.catalog).open_alerts("prod")
    assert alert.kind == kind
    posted = wait_for_message(h.fake, CHANNEL, title)
    assert bool(buttons(posted)) is retry
    if event == "restore.failed":
        assert "a safety backup was taken first: prod-0" in to_text(posted["blocks"])


def test_verify_failure_alert_retries_the_verification_and_recovers(slack_app, tmp_path):
    # GIVEN a backup whose stored copy is corrupted, and the failed verification's alert
    h = slack_app()
    backup = h.services.backup(actor="t", source="cli").backup
    stored = next((tmp_path / "backups" / "prod").glob(f"{backup.id}.dump*"))
    good = stored.read_bytes()
    stored.write_bytes(good[: len(good) // 2] + bytes([good[len(good) // 2] ^ 0xFF]) + good[len(good) // 2 + 1:])
    h.services.verify(backup.id, actor="t", source="cli")
    alert = wait_for_message(h.fake, CHANNEL, "Backup verification failed")
    assert json.loads(buttons(alert)[0]["value"])["backup_id"] == backup.id
    # WHEN the copy is repaired and an operator presses Retry
    stored.write_bytes(good)
    h.click(CHANNEL, alert["ts"], RETRY_ACTION, "U0ALICE", response_url=h.fake.response_url("verify-retry"))
    # THEN the backup is verified again and the alert recovers in its thread
    until(lambda: [m for m in h.fake.replies(CHANNEL, alert["ts"]) if "Recovered" in m["text"]],
          what="the verify recovery")
    assert h.services.get_backup(backup.id).verify_status == "ok"
    assert Alerts(h.services.catalog).open_alerts() == []


def test_retry_on_a_verify_alert_whose_backup_was_pruned_says_so_and_resolves_only_that_alert(slack_app):
    h = slack_app()
    # GIVEN a verification alert about a backup that retention has deleted since
    backup = h.services.backup(actor="t", source="cli").backup
    h.services.emit("verify.failed", target="prod", backup_id=backup.id, error="checksum mismatch")
    alert = wait_for_message(h.fake, CHANNEL, "Backup verification failed")
    h.services.catalog.mark_deleted(backup.id)
    # WHEN its Retry is pressed THEN it says the backup was deleted and resolves the alert
    h.click(CHANNEL, alert["ts"], RETRY_ACTION, "U0ALICE", response_url=h.fake.response_url("gone-retry"))
    told = h.fake.wait_for_response("gone-retry", timeout=20)[0].body["text"]
    assert "deleted by retention" in told and "nothing to verify" in told and "resolved" in told
    until(lambda: [m for m in h.fake.replies(CHANNEL, alert["ts"]) if "Recovered" in m["text"]],
          what="the alert resolved")
    assert Alerts(h.services.catalog).open_alerts() == []


def test_an_old_retry_button_of_a_pruned_backup_does_not_settle_a_newer_failure(slack_app):
    h = slack_app()
    first, second = (h.services.backup(actor="t", source="cli").backup for _ in range(2))
    # GIVEN the verify alert was raised twice for the first backup (the repeat in its thread has a
    # Retry about it), then for the second backup
    h.services.emit("verify.failed", target="prod", backup_id=first.id, error="checksum mismatch")
    alert = wait_for_message(h.fake, CHANNEL, "Backup verification failed")
    h.services.emit("verify.failed", target="prod", backup_id=first.id, error="checksum mismatch")
    [old] = until(lambda: [m for m in h.fake.replies(CHANNEL, alert["ts"]) if buttons(m)
                           and json.loads(buttons(m)[0]["value"])["backup_id"] == first.id], what="the repeat")
    h.services.emit("verify.failed", target="prod", backup_id=second.id, error="checksum mismatch")
    until(lambda: len(h.fake.replies(CHANNEL, alert["ts"])) >= 2, what="the second backup's repeat")
    h.services.catalog.mark_deleted(first.id)
    # WHEN the old repeat's Retry (about the pruned first backup) is pressed
    h.click(CHANNEL, old["ts"], RETRY_ACTION, "U0ALICE", response_url=h.fake.response_url("old-retry"))
    told = h.fake.wait_for_response("old-retry", timeout=20)[0].body["text"]
    # THEN the presser is told, and the alert, now about the second backup, stays open
    assert "deleted by retention" in told and "resolved" not in told
    assert [a.kind for a in Alerts(h.services.catalog).open_alerts()] == ["verify"]
