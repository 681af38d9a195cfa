"""The restore-request state machine: compare-and-set transitions, expiry, restarts; the
post-restore command; and the request messages' Block Kit (all without Slack or PostgreSQL)."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.core.approvals import (
    EXPIRED,
    NOT_FOUND,
    NOT_PENDING,
    NOT_REQUESTER,
    SELF_APPROVAL,
    STATUSES,
    ApprovalRequest,
    ApprovalStore,
    refusal,
)
from bot.core.catalog import Catalog
from bot.core.postrestore import run_post_restore
from bot.render import restore as render
from bot.render.common import to_text
from tests.fakes.slack_api import validate_blocks, validate_view
from tests.fixtures.cli import empty_env_file

T0 = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=30)
BEFORE, AFTER = T0 + timedelta(minutes=5), T0 + timedelta(minutes=31)


def _request(status: str = "pending", **kw: object) -> ApprovalRequest:
    base: dict[str, object] = dict(id=7, backup_id="prod-20240506-020000-ab12", target="prod", mode="into",
                                   into="crm_restore_20240506_120000", table=None, requester="UALICE", status=status,
                                   created_at=T0, expires_at=T0 + TTL, destination="db.internal:5432/crm")
    base.update(kw)
    return ApprovalRequest(**base)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path) -> ApprovalStore:
    return ApprovalStore(Catalog(tmp_path / "catalog.db"))


def _create(store: ApprovalStore, **kw: object) -> ApprovalRequest:
    args: dict[str, object] = dict(backup_id="prod-1", target="prod", mode="into", requester="UALICE", ttl=TTL,
                                   into="scratch", now=T0)
    args.update(kw)
    return store.create(**args)  # type: ignore[arg-type]


# -- the pure rule: who may do what, when ---------------------------------------------------------

@pytest.mark.parametrize("status, now, action, actor, expected", [
    ("pending", BEFORE, "approve", "UBOB", None),
    ("pending", BEFORE, "approve", "UALICE", SELF_APPROVAL),
    ("pending", AFTER, "approve", "UBOB", EXPIRED),
    ("approved", BEFORE, "approve", "UBOB", NOT_PENDING),
    ("running", BEFORE, "approve", "UCAROL", NOT_PENDING),
    ("rejected", BEFORE, "approve", "UBOB", NOT_PENDING),
    ("cancelled", BEFORE, "approve", "UBOB", NOT_PENDING),
    ("expired", BEFORE, "approve", "UBOB", NOT_PENDING),
    ("succeeded", BEFORE, "reject", "UBOB", NOT_PENDING),
    ("pending", BEFORE, "reject", "UBOB", None),
    ("pending", AFTER, "reject", "UBOB", EXPIRED),
    ("pending", BEFORE, "cancel", "UALICE", None),
    ("pending", BEFORE, "cancel", "UBOB", NOT_REQUESTER),
    ("approved", BEFORE, "cancel", "UALICE", NOT_PENDING),
    ("pending", AFTER, "expire", "backupbot", None),
    ("approved", BEFORE, "start", "backupbot", None),
    ("running", BEFORE, "start", "backupbot", "running"),
    ("pending", BEFORE, "start", "backupbot", "pending"),
])
def test_refusal_rules(status, now, action, actor, expected):
    assert refusal(_request(status), action, actor, now) == expected


def test_refusal_of_a_missing_request_is_not_found():
    assert refusal(None, "approve", "UBOB", BEFORE) == NOT_FOUND


# -- the store: every transition a compare-and-set ------------------------------------------------

def test_approval_is_recorded_once_and_a_second_click_changes_nothing(store):
    req = _create(store)
    first = store.approve(req.id, "UBOB", BEFORE)
    assert first.ok and first.request and first.request.status == "approved"
    assert first.request.decided_by == "UBOB" and first.request.decided_at == BEFORE
    again = store.approve(req.id, "UCAROL", BEFORE + timedelta(seconds=1))
    assert not again.ok and again.reason == NOT_PENDING
    assert again.request and again.request.decided_by == "UBOB"  # the first decision stands


def test_two_approvers_at_once_exactly_one_wins(store):
    req = _create(store)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def click(user: str) -> None:
        barrier.wait()
        results.append(store.approve(req.id, user, BEFORE).ok)

    threads = [threading.Thread(target=click, args=(f"UAPPROVER{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


@pytest.mark.parametrize("first, second, reason", [
    (("reject", "UBOB"), ("approve", "UCAROL"), NOT_PENDING),
    (("cancel", "UALICE"), ("approve", "UBOB"), NOT_PENDING),
    (("approve", "UBOB"), ("reject", "UCAROL"), NOT_PENDING),
    (("approve", "UBOB"), ("cancel", "UALICE"), NOT_PENDING),
])
def test_a_decided_request_cannot_be_decided_again(store, first, second, reason):
    req = _create(store)
    assert getattr(store, first[0])(req.id, first[1], BEFORE).ok
    status = store.get(req.id).status
    decision = getattr(store, second[0])(req.id, second[1], BEFORE)
    assert not decision.ok and decision.reason == reason
    assert store.get(req.id).status == status


def test_self_approval_and_foreign_cancel_are_refused_and_leave_it_pending(store):
    req = _create(store)
    assert store.approve(req.id, "UALICE", BEFORE).reason == SELF_APPROVAL
    assert store.cancel(req.id, "UBOB", BEFORE).reason == NOT_REQUESTER
    assert store.get(req.id).status == "pending"


def test_click_after_the_deadline_expires_the_request(store):
    req = _create(store)
    decision = store.approve(req.id, "UBOB", AFTER)
    assert not decision.ok and decision.reason == EXPIRED
    assert store.get(req.id).status == "expired" and store.get(req.id).decided_by is None


def test_expire_due_marks_only_overdue_pending_requests_once(store):
    overdue = _create(store)
    approved = _create(store)
    store.approve(approved.id, "UBOB", BEFORE)
    fresh = _create(store, now=T0 + timedelta(minutes=20))
    expired = store.expire_due(AFTER)
    assert [r.id for r in expired] == [overdue.id]
    assert store.expire_due(AFTER) == []
    assert {store.get(i).status for i in (approved.id, fresh.id)} == {"approved", "pending"}


def test_only_one_executor_starts_an_approved_request_and_finish_records_the_result(store):
    req = _create(store)
    assert not store.start(req.id, BEFORE).ok  # not approved yet
    store.approve(req.id, "UBOB", BEFORE)
    assert store.start(req.id, BEFORE).ok
    assert store.start(req.id, BEFORE).reason == "running"
    done = store.finish(req.id, ok=True, result={"summary": "✓ verified"}, rto_s=3.5, now=AFTER)
    assert (done.status, done.rto_s, done.result["summary"], done.finished_at) == ("succeeded", 3.5, "✓ verified", AFTER)
    assert store.finish(req.id, ok=False, result={}).status == "succeeded"  # final states stay final


def test_requests_survive_reopening_the_catalog_and_interrupted_runs_are_failed(tmp_path):
    path = tmp_path / "catalog.db"
    first = ApprovalStore(Catalog(path))
    pending = _create(first)
    running = _create(first)
    first.approve(running.id, "UBOB", BEFORE)
    first.start(running.id, BEFORE)
    first.catalog.close()
    again = ApprovalStore(Catalog(path))
    assert again.get(pending.id).status == "pending"
    abandoned = again.abandon_unfinished(AFTER)
    assert [r.id for r in abandoned] == [running.id]
    assert again.get(running.id).status == "failed" and "interrupted" in again.get(running.id).result["error"]
    assert [r.id for r in again.recent(status="pending")] == [pending.id]


# -- the post-restore command ---------------------------------------------------------------------

def test_post_restore_command_gets_the_url_in_its_environment_without_a_shell():
    url = "postgresql://app:Sekr1t-pw-77@db:5432/restored"
    code = "import os,sys; print(os.environ['RESTORED_DATABASE_URL']); print(os.environ['DATABASE_URL']); sys.exit(3)"
    result = run_post_restore(f"{sys.executable} -c \"{code}\" '$HOME; true'", url, timeout_s=30)
    assert result.exit_code == 3 and not result.ok and "status 3" in result.summary()
    assert "postgresql://app:***@db:5432/restored" in result.output_tail
    assert "Sekr1t-pw-77" not in result.output_tail + result.summary()
    assert result.argv[-1] == "$HOME; true"  # an argument, never interpreted by a shell


BOT_SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-1-bot", "SLACK_APP_TOKEN": "xapp-1-app", "SLACK_SIGNING_SECRET": "signing",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "aws-secret", "SUPABASE_ACCESS_TOKEN": "sbp_x",
    "ENCRYPTION_RECIPIENTS": "age1recipient", "AGE_IDENTITY_FILE": "/etc/backupbot/age.key",
    "HEARTBEAT_URL": "https://hc.example/ping/abc", "GITHUB_TOKEN": "ghp_x", "LC_SECRET_THING": "x",
    "S3_BUCKET": "backups", "BACKUPBOT_DB": "/var/lib/backupbot/catalog.db",
}


def test_post_restore_command_gets_a_minimal_environment_without_the_bots_secrets(monkeypatch, tmp_path):
    # GIVEN the bot's environment with its credentials, the source database's URL and locale settings
    for name, value in BOT_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:source-pw@prod:5432/crm")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    seen = tmp_path / "env.json"
    # (names, and only the values the test checks: a failure must not print this machine's secrets)
    code = ("import json,os,sys; e=os.environ; json.dump([sorted(e), [e.get(k) for k in "
            "('DATABASE_URL','RESTORED_DATABASE_URL','LC_ALL','TZ')]], open(sys.argv[1], 'w'))")
    # WHEN the post-restore command runs (and writes down the environment it got)
    result = run_post_restore(f"{sys.executable} -c \"{code}\" {seen}", "postgresql://app:pw@db:5432/restored",
                              timeout_s=30)
    # THEN it got the restored database's URL and what a program needs to run, and nothing else
    assert result.ok, result.summary()
    names, values = json.loads(seen.read_text())
    restored = "postgresql://app:pw@db:5432/restored"
    assert values == [restored, restored, "C.UTF-8", "Europe/Berlin"] and "PATH" in names
    assert not set(BOT_SECRETS) & set(names)
    assert set(names) - {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "DATABASE_URL", "RESTORED_DATABASE_URL"} == {
        n for n in names if n.startswith("LC_")}


def test_post_restore_command_is_stopped_at_its_timeout():
    result = run_post_restore(f"{sys.executable} -c \"import time; print('started', flush=True); time.sleep(60)\"",
                              "postgresql://h/db", timeout_s=1)
    assert result.timed_out and not result.ok and result.exit_code is None
    assert "started" in result.output_tail and "timed out" in result.summary()


@pytest.mark.parametrize("command, problem", [("/no/such/binary --x", "No such file"), ("'unbalanced", "cannot split")])
def test_post_restore_command_that_cannot_run_says_why(command, problem):
    result = run_post_restore(command, "postgresql://h/db", timeout_s=5)
    assert not result.ok and problem in (result.error or "")


# -- the messages: valid Block Kit in every state, never a password -------------------------------

@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("mode", ["into", "in-place"])
def test_request_and_controls_messages_are_valid_block_kit_in_every_state(status, mode):
    tz = ZoneInfo("Europe/Berlin")
    req = _request(status, mode=mode, decided_by="UBOB" if status != "pending" else None, decided_at=BEFORE,
                   finished_at=AFTER, rto_s=4.2, safety_backup_id="prod-pre" if mode == "in-place" else None,
                   result={"summary": "✓ verified (9 checks)", "target_state": "prod is unchanged"},
                   details={"backup_created_at": "2024-05-06T02:00:00Z", "size_bytes": 123456, "source_target": "prod"})
    for msg in (render.request_message(req, tz, BEFORE), render.controls_message(req, ("UBOB", "S0DBAS"), tz)):
        assert validate_blocks(msg["blocks"]) == [] and msg["text"]
    controls = render.controls_message(req, ("UBOB", "S0DBAS"), tz)
    has_buttons = any(b["type"] == "actions" for b in controls["blocks"])
    assert has_buttons == (status == "pending")
    if status == "pending":
        assert "<!subteam^S0DBAS>" in controls["blocks"][0]["text"]["text"]
        approve = controls["blocks"][1]["elements"][0]
        assert approve["action_id"] == render.APPROVE and "confirm" in approve


def test_report_failure_and_modal_builders_are_valid_and_clipped():
    req = _request("failed", mode="in-place", confirm_text="prod")
    many = [f"✓ rows crm.table_{i} — {i} restored, {i} in backup" for i in range(400)]
    report = render.report_message(req, many, report_ok=False, rto_s=3.0, total_s=9.0, destination="h:5432/db",
                                   post_restore={"ok": False, "summary": "`make test` exited with status 1",
                                                 "output_tail": "x" * 5000})
    assert validate_blocks(report["blocks"]) == []
    assert "more lines" in to_text(report["blocks"])
    state = render.target_state(req, "load", "prod-pre-1")
    failure = render.failure_message(req, "load", "pg_restore failed: " + "e" * 4000, state)
    assert validate_blocks(failure["blocks"]) == [] and "unchanged thanks to the transaction" in to_text(failure["blocks"])
    assert validate_view(render.confirm_modal(req)) == []


@pytest.mark.parametrize("mode, step, expected", [
    ("in-place", "load", "unchanged thanks to the transaction"),
    ("in-place", "restore", "unchanged: the restore stopped before pg_restore started"),  # e.g. a corrupt copy
    ("in-place", "safety backup", "unchanged: the restore did not start"),
    ("in-place", "verification", "now holds the restored data"),
    ("into", "restore", "Nothing existing was touched"),
    ("into", "verification", "left for inspection"),
])
def test_target_state_after_a_failure_says_what_the_destination_holds(mode, step, expected):
    state = render.target_state(_request("failed", mode=mode), step, "prod-pre-1" if mode == "in-place" else None)
    assert expected in state
    if mode == "in-place" and step != "safety backup":
        assert "prod-pre-1" in state


# -- the CLI front end ----------------------------------------------------------------------------

def test_cli_lists_pending_requests_and_recent_audit_events(tmp_path, monkeypatch, capsys):
    from bot.cli import main

    store = ApprovalStore(Catalog(tmp_path / "catalog.db"))
    pending = _create(store, now=datetime.now(UTC))
    done = _create(store)
    store.reject(done.id, "UBOB", BEFORE)
    store.catalog.audit("restore_request.created", actor="UALICE", source="slack", target="prod",
                        backup_id="prod-1", details={"request_id": pending.id, "mode": "into"})
    for key, value in {"DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/db", "BACKUPBOT_DB": str(tmp_path / "catalog.db"),
                       "BACKUP_DIR": str(tmp_path / "b")}.items():
        monkeypatch.setenv(key, value)
    empty = empty_env_file(tmp_path)
    assert main(["--env-file", empty, "restore-requests"]) == 0
    out = capsys.readouterr().out
    assert f"#{pending.id} pending" in out and f"#{done.id}" not in out
    assert main(["--env-file", empty, "audit", "5"]) == 0
    out = capsys.readouterr().out
    assert "UALICE (slack) restore_request.created prod prod-1 — request_id=1, mode=into" in out


def test_cli_refuses_an_env_file_that_is_not_there(tmp_path, monkeypatch, capsys):
    from bot.cli import main

    # GIVEN a usable environment, and a mistyped --env-file
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@127.0.0.1:1/db")
    monkeypatch.setenv("BACKUPBOT_DB", str(tmp_path / "catalog.db"))
    # WHEN a command runs with it THEN one line names the file and nothing runs on the environment alone
    assert main(["--env-file", str(tmp_path / "prod.env"), "list"]) == 2
    err = capsys.readouterr().err
    assert f"--env-file {tmp_path / 'prod.env'} is not a file" in err
    assert not (tmp_path / "catalog.db").exists()
    # AND without --env-file, a missing ./.env is fine (it is optional)
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 0


def test_cli_times_carry_their_zone_so_the_repeated_autumn_hour_is_not_ambiguous(tmp_path, monkeypatch, capsys):
    from bot.cli import main
    from bot.core.catalog import Copy, iso

    # GIVEN two backups 02:30 Berlin time apiece on 2026-10-25, before and after clocks went back
    catalog = Catalog(tmp_path / "catalog.db")
    for backup_id, at in (("prod-a", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
                          ("prod-b", datetime(2026, 10, 25, 1, 30, tzinfo=UTC))):
        catalog.add_backup({"id": backup_id, "target": "prod", "status": "complete", "kind": "scheduled",
                            "created_at": iso(at), "sha256": "0" * 64, "size_bytes": 1234,
                            "object_key": f"prod/{backup_id}.dump.zst", "verify_status": "ok"},
                           [Copy("local", f"/b/{backup_id}", "stored", 1234)])
        catalog.audit("backup.done", actor="cron", source="cli", target="prod", backup_id=backup_id)
    # The audit events are stamped now; make them the two instants too.
    catalog.db.execute("UPDATE audit SET at = ? WHERE backup_id = 'prod-a'", [iso(datetime(2026, 10, 25, 0, 30, tzinfo=UTC))])
    catalog.db.execute("UPDATE audit SET at = ? WHERE backup_id = 'prod-b'", [iso(datetime(2026, 10, 25, 1, 30, tzinfo=UTC))])
    catalog.db.conn.commit()
    for key, value in {"DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/db", "BACKUPBOT_DB": str(tmp_path / "catalog.db"),
                       "BACKUP_DIR": str(tmp_path / "b"), "BACKUP_TIMEZONE": "Europe/Berlin"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    # WHEN listing them and reading the audit log
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert main(["audit", "5"]) == 0
    audited = capsys.readouterr().out
    # THEN each time says which 02:30 it was
    for out in (listed, audited):
        assert "2026-10-25 02:30:00 CEST" in out and "2026-10-25 02:30:00 CET" in out, out
