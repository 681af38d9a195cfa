"""Restores from Slack with a second person's approval, end to end: signed HTTP requests to the
app, the fake Slack Web API, real PostgreSQL. Every wait polls with a deadline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.core.approvals import ApprovalRequest, ApprovalStore
from bot.render import restore as render
from commands.restore_flow import RestoreFlow, start_expiry_sweep
from tests.fakes.slack_requests import post, view_submission_body
from tests.fixtures.pg import PASSWORD, query, table_checksums
from tests.fixtures.slack import CHANNEL, SIGNING_SECRET, SlackHarness

ALICE, BOB, CAROL = "U0ALICE", "U0BOB", "U0CAROL"  # requester, approver, neither
APPROVERS = {"RESTORE_APPROVERS": f"{BOB},S0DBAS"}


def wait_until(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _url_for(url: str, dbname: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + dbname


def _store(h: SlackHarness) -> ApprovalStore:
    return ApprovalStore(h.services.catalog)


def _actions(h: SlackHarness, *names: str) -> list[str]:
    return [e["action"] for e in reversed(h.services.catalog.audit_events(200)) if not names or e["action"] in names]


def _restore_runs(h: SlackHarness) -> list[dict[str, Any]]:
    return h.services.catalog.runs(kind="restore")


def request(h: SlackHarness, args: str, user: str = ALICE) -> tuple[ApprovalRequest, str, str]:
    """`/backup restore …` → (the request, its message ts, the ts of the thread reply with buttons)."""
    before = len(_store(h).recent(limit=1000))
    reply = h.command(f"restore {args}", user=user)
    assert reply.status == 200
    h.fake.wait_for_response(reply.response_id, count=2, timeout=30)
    req = wait_until("the request to be posted", lambda: len(_store(h).recent(limit=1000)) > before
                     and _store(h).recent(limit=1)[0].controls_ts and _store(h).recent(limit=1)[0])
    assert req.message_ts and req.controls_ts
    return req, req.message_ts, req.controls_ts


def refused(h: SlackHarness, args: str, user: str = ALICE, **_: Any) -> str:
    """A request refused before anything is posted: returns what the requester was told."""
    reply = h.command(f"restore {args}", user=user)
    assert reply.status == 200
    bodies = [r.body for r in h.fake.wait_for_response(reply.response_id, timeout=30)]
    if not any(":x:" in b.get("text", "") for b in bodies):
        bodies = [r.body for r in h.fake.wait_for_response(reply.response_id, count=2, timeout=30)]
    assert all(b.get("response_type") == "ephemeral" for b in bodies)
    return "\n".join(b.get("text", "") for b in bodies)


def ephemeral_to(h: SlackHarness, user: str, count: int = 1) -> str:
    calls = h.fake.wait_for(lambda c: c.method == "chat.postEphemeral" and c.params.get("user") == user,
                            count=count, timeout=30)
    return str(calls[count - 1].params["text"])


def finished(h: SlackHarness, req: ApprovalRequest) -> ApprovalRequest:
    """Wait until the run ended and its request message shows the outcome."""
    def done() -> ApprovalRequest | None:
        r = _store(h).get(req.id)
        shown = h.fake.message(CHANNEL, req.message_ts or "")["text"]
        return r if r.status in ("succeeded", "failed") and ("restored ✓" in shown or "failed ✗" in shown) else None
    return wait_until(f"restore #{req.id} to finish", done)


def thread_text(h: SlackHarness, ts: str) -> str:
    return "\n".join(m["text"] + json.dumps(m.get("blocks", [])) for m in h.fake.replies(CHANNEL, ts))


def confirm_in_place(h: SlackHarness, user: str, typed: str) -> dict[str, Any]:
    """Submit the in-place confirmation modal the last Approve click opened."""
    view = h.fake.wait_for("views.open", timeout=30)[-1].params["view"]
    values = {render.CONFIRM_BLOCK: {render.CONFIRM_INPUT: {"type": "plain_text_input", "value": typed}}}
    body = view_submission_body(render.CONFIRM_CALLBACK, values, user_id=user, private_metadata=view["private_metadata"],
                                blocks=view["blocks"])
    status, _headers, text = post(h.url, body, SIGNING_SECRET)
    assert status == 200
    return json.loads(text) if text else {}


@pytest.fixture
def harness(slack_app) -> Callable[..., SlackHarness]:
    def build(**env: str) -> SlackHarness:
        return slack_app(**{**APPROVERS, **env})
    return build


# -- the whole flow -------------------------------------------------------------------------------

def test_request_self_approval_refused_then_second_person_restores_into_new_database(harness, crm_db):
    # GIVEN a verified backup and an approver (BOB) other than the requester (ALICE)
    h = harness()
    backup = h.services.backup(actor="t", source="cli").backup
    # WHEN ALICE requests a restore into a new database
    req, req_ts, controls_ts = request(h, f"{backup.id} --into crm_from_slack")
    posted = h.fake.message(CHANNEL, req_ts)
    assert "Restore request #" in posted["text"] and backup.id in json.dumps(posted["blocks"])
    shown = json.dumps(posted["blocks"])
    assert "crm_from_slack" in shown and "Expires" in shown and PASSWORD not in shown
    controls = h.fake.message(CHANNEL, controls_ts)
    assert controls["thread_ts"] == req_ts and f"<@{BOB}>" in json.dumps(controls["blocks"])
    # AND clicks Approve herself: refused, nothing restored
    h.click(CHANNEL, controls_ts, render.APPROVE, user=ALICE)
    assert "cannot approve it" in ephemeral_to(h, ALICE)
    assert _store(h).get(req.id).status == "pending" and _restore_runs(h) == []
    # WHEN BOB approves
    h.click(CHANNEL, controls_ts, render.APPROVE, user=BOB)
    done = finished(h, req)
    # THEN the backup is restored into the new database and verified
    assert done.status == "succeeded", done.result
    assert table_checksums(_url_for(crm_db, "crm_from_slack")) == table_checksums(crm_db)
    thread = h.fake.replies(CHANNEL, req_ts)
    assert all(m["thread_ts"] == req_ts for m in thread)
    report = next(m for m in thread if "Verification report" in json.dumps(m.get("blocks", [])))
    assert "✓ rows crm.notes" in json.dumps(report["blocks"], ensure_ascii=False) and "RTO" in json.dumps(report["blocks"])
    # AND the request message shows who approved and the result; no buttons remain anywhere
    final = h.fake.message(CHANNEL, req_ts)
    assert f"Approved by*: <@{BOB}>" in json.dumps(final["blocks"]) and "Restored at" in json.dumps(final["blocks"])
    assert not any(b["type"] == "actions" for b in h.fake.message(CHANNEL, controls_ts)["blocks"])
    assert done.rto_s and _restore_runs(h)[0]["rto_s"] == done.rto_s
    assert _actions(h, "restore_request.created", "restore_request.refused", "restore_request.approved",
                    "restore_request.started", "restore_request.succeeded") == [
        "restore_request.created", "restore_request.refused", "restore_request.approved",
        "restore_request.started", "restore_request.succeeded"]
    refusal = next(e for e in h.services.catalog.audit_events(50) if e["action"] == "restore_request.refused")
    assert refusal["actor"] == ALICE and "self_approval" in refusal["details"]
    assert not [w for w in h.fake.warnings if "block_id" in w]


def test_in_place_restore_after_typed_confirmation_brings_rows_back_with_a_safety_backup(harness, crm_db):
    h = harness(POST_RESTORE_COMMAND="python3 -c \"import os; print('smoke ok', os.environ['DATABASE_URL'])\"")
    backup = h.services.backup(actor="t", source="cli").backup
    query(crm_db, "DELETE FROM crm.notes WHERE id > 100")
    req, req_ts, controls_ts = request(h, f"{backup.id} --in-place")
    assert "in place" in json.dumps(h.fake.message(CHANNEL, req_ts)["blocks"])
    # Approve opens the typed confirmation; a wrong name keeps the dialog open and restores nothing
    h.click(CHANNEL, controls_ts, render.APPROVE, user=BOB)
    answer = confirm_in_place(h, BOB, "production")
    assert answer["response_action"] == "errors" and render.CONFIRM_BLOCK in answer["errors"]
    assert _store(h).get(req.id).status == "pending" and _restore_runs(h) == []
    confirm_in_place(h, BOB, "prod")
    done = finished(h, req)
    assert done.status == "succeeded", done.result
    assert query(crm_db, "SELECT count(*) FROM crm.notes")[0][0] == 800
    # The safety backup is in the catalog, tagged, and holds the state just before the restore
    safety = h.services.get_backup(done.safety_backup_id or "")
    assert safety.kind == "pre-restore" and "pre-restore" in safety.tags
    assert next(t for t in safety.manifest["tables"] if t["name"] == "notes")["rows"] == 100
    thread = thread_text(h, req_ts)
    assert safety.id in thread and "smoke ok" in thread and "exited with status 0" in thread
    assert PASSWORD not in thread
    assert any("reason" in e["details"] and "confirmation_mismatch" in e["details"]
               for e in h.services.catalog.audit_events(50) if e["action"] == "restore_request.refused")


def _confirm_timed(h: SlackHarness, user: str, typed: str) -> float:
    t0 = time.perf_counter()
    answer = confirm_in_place(h, user, typed)
    assert answer == {}, "a correct name closes the dialog"
    return time.perf_counter() - t0


def test_in_place_confirmation_acks_at_once_while_the_approver_group_lookup_is_rate_limited(harness, crm_db):
    # GIVEN an in-place request, and CAROL (a member of the approvers' group) who opened the dialog
    first = harness()
    first.fake.set_usergroup("S0DBAS", [CAROL])
    backup = first.services.backup(actor="t", source="cli").backup
    req, req_ts, controls = request(first, f"{backup.id} --in-place")
    first.click(CHANNEL, controls, render.APPROVE, user=CAROL)
    # AND an instance whose group cache is cold, with Slack rate-limiting the lookup (Retry-After: 2)
    h = harness()
    h.fake.fail_next("usergroups.users.list", status=429, retry_after=2)
    # WHEN she submits the right name THEN the dialog closes at once, and the restore still runs
    assert _confirm_timed(h, CAROL, "prod") < 1.5
    done = finished(h, req)
    assert done.status == "succeeded" and done.decided_by == CAROL


def test_in_place_confirmation_by_someone_no_longer_an_approver_is_refused_after_a_prompt_ack(harness, crm_db):
    # GIVEN CAROL opened the in-place confirmation as a member of the approvers' group
    first = harness()
    first.fake.set_usergroup("S0DBAS", [CAROL])
    backup = first.services.backup(actor="t", source="cli").backup
    req, req_ts, controls = request(first, f"{backup.id} --in-place")
    first.click(CHANNEL, controls, render.APPROVE, user=CAROL)
    # AND she left the group; a cold group cache, with Slack rate-limiting the lookup (Retry-After: 2)
    h = harness()
    h.fake.set_usergroup("S0DBAS", [])
    h.fake.fail_next("usergroups.users.list", status=429, retry_after=2)
    # WHEN she submits the right name THEN the ack is prompt
    assert _confirm_timed(h, CAROL, "prod") < 1.5
    # AND she is told privately in the request's thread, the refusal is audited, and nothing runs
    refusal = h.fake.wait_for(lambda c: c.method == "chat.postEphemeral" and c.params.get("user") == CAROL,
                              timeout=30)[-1].params
    assert "Only restore approvers" in refusal["text"] and refusal["thread_ts"] == req_ts
    event = wait_until("the refusal's audit event", lambda: next(
        (e for e in h.services.catalog.audit_events(50) if e["action"] == "restore_request.refused"), None))
    assert event["actor"] == CAROL and "not_approver" in event["details"]
    assert _store(h).get(req.id).status == "pending" and _restore_runs(h) == []


def test_in_place_restore_failing_half_way_leaves_target_exactly_as_before(harness, crm_db):
    h = harness()
    alerts: list[tuple[str, dict[str, Any]]] = []
    h.services.listeners.append(lambda event, data: alerts.append((event, data)))
    backup = h.services.backup(actor="t", source="cli").backup
    query(crm_db, "DELETE FROM crm.notes WHERE id > 700")
    # A conflicting object: a view the backup does not know depends on a table pg_restore must drop.
    query(crm_db, "CREATE VIEW public.v AS SELECT body FROM crm.notes")
    before = table_checksums(crm_db)
    req, req_ts, controls_ts = request(h, f"{backup.id} --in-place")
    h.click(CHANNEL, controls_ts, render.APPROVE, user=BOB)
    confirm_in_place(h, BOB, "prod")
    done = finished(h, req)
    assert done.status == "failed" and done.result["step"] == "load"
    assert table_checksums(crm_db) == before
    thread = thread_text(h, req_ts)
    assert "unchanged thanks to the transaction" in thread and done.safety_backup_id in thread
    assert any(e == "restore.failed" and d["safety_backup"] == done.safety_backup_id for e, d in alerts)
    assert "restore_request.failed" in _actions(h)
    assert "failed ✗" in h.fake.message(CHANNEL, req_ts)["text"]


# -- clicks that must change nothing --------------------------------------------------------------

def test_non_approver_expired_rejected_and_double_clicks_are_refused(harness, crm_db):
    h = harness()
    backup = h.services.backup(actor="t", source="cli").backup
    flow = RestoreFlow(h.ctx)
    # a non-approver
    first, _ts1, controls1 = request(h, f"{backup.id} --into never_a")
    h.click(CHANNEL, controls1, render.APPROVE, user=CAROL)
    assert "Only restore approvers" in ephemeral_to(h, CAROL)
    assert _store(h).get(first.id).status == "pending"
    # a rejected request, then Approve
    h.click(CHANNEL, controls1, render.REJECT, user=BOB)
    wait_until("rejection", lambda: _store(h).get(first.id).status == "rejected")
    old_message = h.fake.history(CHANNEL, controls1)[0]
    _click_stale(h, old_message, BOB)
    assert "was rejected by" in ephemeral_to(h, BOB)
    # an expired request (the sweep with a clock past its deadline), then Approve on the old buttons
    second, ts2, controls2 = request(h, f"{backup.id} --into never_b")
    stale = h.fake.message(CHANNEL, controls2)
    assert [r.id for r in flow.expire_due(second.expires_at + timedelta(seconds=1))] == [second.id]
    assert "expired" in h.fake.message(CHANNEL, ts2)["text"]
    assert not any(b["type"] == "actions" for b in h.fake.message(CHANNEL, controls2)["blocks"])
    _click_stale(h, stale, BOB)
    assert "expired" in ephemeral_to(h, BOB, count=2)
    # an expired request nobody swept yet: the click itself notices
    third, ts3, controls3 = request(h, f"{backup.id} --into never_c")
    real_clock = h.services.clock
    h.services.clock = lambda: real_clock() + timedelta(hours=1)
    h.click(CHANNEL, controls3, render.APPROVE, user=BOB)
    assert "expired" in ephemeral_to(h, BOB, count=3)
    wait_until("the message to say expired", lambda: "expired" in h.fake.message(CHANNEL, ts3)["text"])
    h.services.clock = real_clock
    # a double click: the second Approve does nothing but explain
    fourth, _ts4, controls4 = request(h, f"{backup.id} --into crm_double")
    stale = h.fake.message(CHANNEL, controls4)
    h.click(CHANNEL, controls4, render.APPROVE, user=BOB)
    _click_stale(h, stale, BOB)
    assert "already approved" in ephemeral_to(h, BOB, count=4)
    finished(h, fourth)
    assert len(_restore_runs(h)) == 1  # only the double-clicked request ran, once
    assert query(crm_db, "SELECT count(*) FROM pg_database WHERE datname LIKE 'never_%'")[0][0] == 0
    reasons = [json.loads(e["details"])["reason"] for e in h.services.catalog.audit_events(200)
               if e["action"] == "restore_request.refused"]
    assert sorted(reasons) == sorted(["not_approver", "not_pending", "not_pending", "expired", "not_pending"])
    assert _actions(h, "restore_request.expired").count("restore_request.expired") == 2


def _click_stale(h: SlackHarness, message: dict[str, Any], user: str) -> None:
    """Click Approve on a copy of a message as a user's client may still show it."""
    from tests.fakes.slack_requests import block_actions_body

    body = block_actions_body(action_id=render.APPROVE, user_id=user, channel_id=CHANNEL, message=message)
    status, _h, _b = post(h.url, body, SIGNING_SECRET)
    assert status == 200


def test_requester_can_cancel_but_nobody_else(harness, crm_db):
    h = harness()
    backup = h.services.backup(actor="t", source="cli").backup
    req, req_ts, controls = request(h, backup.id)
    h.click(CHANNEL, controls, render.CANCEL, user=BOB)
    assert "can cancel it" in ephemeral_to(h, BOB)
    h.click(CHANNEL, controls, render.CANCEL, user=ALICE)
    wait_until("cancel", lambda: "cancelled" in h.fake.message(CHANNEL, req_ts)["text"])
    assert _store(h).get(req.id).status == "cancelled" and _restore_runs(h) == []


# -- refused before anything is posted ------------------------------------------------------------

def _corrupt(tmp_path: Path, backup_id: str) -> None:
    stored = next((tmp_path / "backups" / "prod").glob(f"{backup_id}.dump*"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))


@pytest.mark.parametrize("case, env, expected", [
    ("unknown backup", {}, "no backup with id"),
    ("corrupted backup", {}, "failed verification"),
    ("unknown target", {}, "unknown target 'staging'"),
    ("no approvers", {"RESTORE_APPROVERS": ""}, "set RESTORE_APPROVERS"),
    ("not a requester", {"RESTORE_REQUESTERS": BOB}, "may not request restores"),
    ("only approver is the requester", {"RESTORE_APPROVERS": ALICE}, "Nobody but you"),
    ("both modes", {}, "exclude each other"),
])
def test_requests_refused_with_a_clear_ephemeral_message_and_audited(harness, crm_db, tmp_path, case, env, expected):
    h = harness(**env)
    backup = h.services.backup(actor="t", source="cli").backup
    args = {"unknown backup": "prod-20990101-000000-zzzz", "unknown target": f"{backup.id} --target staging",
            "both modes": f"{backup.id} --in-place --into x"}.get(case, backup.id)
    if case == "corrupted backup":
        _corrupt(tmp_path, backup.id)
    told = refused(h, args)
    assert expected in told, told
    # (a corrupted backup also raises the integrity alert in the channel; no request is posted)
    assert not [m for m in h.fake.messages(CHANNEL) if "Restore request" in m["text"]]
    assert _store(h).recent() == [] and _restore_runs(h) == []
    event = wait_until("the refusal's audit event", lambda: next(
        (e for e in h.services.catalog.audit_events(50) if e["action"] == "restore_request.refused"), None))
    assert event["actor"] == ALICE and event["source"] == "slack"


# -- restarts and the sweep -----------------------------------------------------------------------

def test_pending_request_survives_a_restart_and_is_approved_by_the_new_instance(harness, crm_db):
    first = harness()
    backup = first.services.backup(actor="t", source="cli").backup
    req, req_ts, controls = request(first, f"{backup.id} --into crm_after_restart")
    # a new app instance over the same catalog (the old one no longer answers); the approver is
    # CAROL, a member of the approvers' user group
    second = harness()
    second.fake.set_usergroup("S0DBAS", [CAROL])
    assert _store(second).get(req.id).status == "pending"
    second.click(CHANNEL, controls, render.APPROVE, user=CAROL)
    done = finished(second, req)
    assert done.status == "succeeded" and done.decided_by == CAROL
    assert query(_url_for(crm_db, "crm_after_restart"), "SELECT count(*) FROM crm.notes")[0][0] == 800


def test_start_hook_fails_interrupted_runs_then_sweeps_expired_requests_until_stopped(harness, crm_db):
    h = harness()
    backup = h.services.backup(actor="t", source="cli").backup
    # a run a stop of the bot interrupted (approved and started, never finished)
    stuck, stuck_ts, _c = request(h, f"{backup.id} --into crm_stuck")
    _store(h).approve(stuck.id, BOB)
    _store(h).start(stuck.id)
    req, req_ts, _controls = request(h, backup.id)
    real_clock = h.services.clock
    h.services.clock = lambda: real_clock() + timedelta(hours=1)
    stop = start_expiry_sweep(h.ctx, interval_s=0.05)
    try:
        wait_until("the sweep", lambda: "expired" in h.fake.message(CHANNEL, req_ts)["text"], timeout=20)
    finally:
        stop()
    assert _store(h).get(req.id).status == "expired"
    assert "restore_request.expired" in _actions(h)
    assert _store(h).get(stuck.id).status == "failed" and "interrupted" in thread_text(h, stuck_ts)
    assert "failed ✗" in h.fake.message(CHANNEL, stuck_ts)["text"]


def test_a_copy_corrupted_after_approval_fails_before_pg_restore_and_says_so(harness, crm_db):
    from pathlib import Path

    h = harness()
    backup = h.services.backup(actor="t", source="cli").backup
    req, req_ts, controls_ts = request(h, f"{backup.id} --in-place")
    # GIVEN the stored copy damaged between the request and the approval
    stored = next((Path(h.ctx.settings.backup_dir) / "prod").glob(f"{backup.id}.dump*"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    before = table_checksums(crm_db)
    # WHEN it is approved
    h.click(CHANNEL, controls_ts, render.APPROVE, user=BOB)
    confirm_in_place(h, BOB, "prod")
    done = finished(h, req)
    # THEN it fails before pg_restore ran, says so (not "rolled back"), and prod is as it was
    assert done.status == "failed" and done.result["step"] == "restore", done.result
    thread = thread_text(h, req_ts)
    assert "stopped before pg_restore started" in thread and "rolled back" not in thread
    assert table_checksums(crm_db) == before


def test_a_backup_refused_by_a_running_restore_says_it_is_a_restore(harness):
    import threading

    h = harness()
    # GIVEN a restore over prod holding its lock (as an in-place restore does)
    run_id = h.services.catalog.start_run("restore", "prod", BOB, "slack", {"mode": "in-place"})
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with h.services.target_lock("prod"):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        # WHEN a backup of prod is asked for THEN it is refused naming the restore
        from bot.services import BackupBusy

        with pytest.raises(BackupBusy) as err:
            h.services.backup("prod", actor="t", source="cli")
        assert "a restore over prod is already running" in err.value.message
    finally:
        release.set()
        holder.join(10)
        h.services.catalog.finish_run(run_id, "ok")


def test_audit_command_shows_recent_events_with_user_ids(harness, crm_db):
    h = harness()
    refused(h, "prod-20990101-000000-zzzz")
    reply = h.command("audit 5", user=BOB)
    shown = json.dumps(reply.responses()[0])
    assert "restore_request.refused" in shown and f"<@{ALICE}>" in shown
