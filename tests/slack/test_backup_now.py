"""`/backup now`: ack at once, one channel message updated to the result, one backup per target,
Slack retries never start a second backup, and only operators may run it."""

from __future__ import annotations

import json
import time

from commands.backup_now import Throttle
from tests.fakes.slack_requests import post, slash_command_body
from tests.fixtures.slack import CHANNEL, SIGNING_SECRET
from tests.slack.support import find_message, gated_bindir, until, wait_for_message

ACK_BOUND_S = 3.0  # Slack's own limit; the real figure (bench/ack_latency.py) is far below


def _backups(h) -> list:
    return h.services.list_backups()


def test_now_acks_started_and_updates_one_channel_message_to_the_result(slack_app):
    # GIVEN the app
    h = slack_app()
    # WHEN an operator runs /backup now
    reply = h.command("now")
    # THEN the ack is private and says started
    assert reply.status == 200
    first = reply.responses()[0]
    assert first["response_type"] == "ephemeral" and "Started a backup of prod" in first["text"]
    # AND one channel message ends as the result: size, duration, checksum prefix, copies
    final = wait_for_message(h.fake, CHANNEL, "complete")
    [backup] = _backups(h)
    assert backup.id in final["text"] and backup.sha256[:12] in final["text"]
    shown = json.dumps(final["blocks"])
    assert "Size" in shown and "Duration" in shown and "local" in shown and "stored" not in final["text"]
    posts = [c for c in h.fake.calls("chat.postMessage") if c.params.get("channel") == CHANNEL]
    assert len(posts) == 1, "progress and result are one message, updated in place"
    versions = h.fake.history(CHANNEL, final["ts"])
    assert versions[0]["text"].startswith("Backing up prod") and versions[-1]["text"] == final["text"]
    # AND the catalog records who asked, from Slack
    start = h.services.catalog.audit_events(action="backup.start")[0]
    assert (start["actor"], start["source"]) == ("U0ALICE", "slack")
    assert h.fake.warnings == []


def test_now_while_another_process_holds_the_target_says_so_instead_of_failing(slack_app):
    # GIVEN the target's lock is held elsewhere (as a CLI backup in another process would)
    h = slack_app()
    with h.services.target_lock("prod"):
        # WHEN /backup now runs THEN the requester is told privately that a backup is already running
        busy = h.command("now").responses()[0]
    assert busy["response_type"] == "ephemeral"
    assert "already running" in busy["text"] and "not starting another" in busy["text"]
    # AND nothing was posted, taken or recorded as failed
    assert h.fake.calls("chat.postMessage") == [] and _backups(h) == []
    assert h.services.catalog.audit_events(action="backup.failed") == []


def test_now_starts_a_backup_despite_a_running_row_left_by_a_killed_cli_backup(slack_app):
    # GIVEN a 'running' backup run that a CLI backup killed by Ctrl-C left behind (nobody holds the lock)
    h = slack_app()
    stale = h.services.catalog.start_run("backup", "prod", "someone", "cli")
    # WHEN an operator runs /backup now
    reply = h.command("now")
    # THEN a backup starts and completes
    assert "Started a backup of prod" in reply.responses()[0]["text"]
    wait_for_message(h.fake, CHANNEL, "complete")
    assert len(_backups(h)) == 1
    # AND the abandoned run is settled as failed, not left running
    assert next(r for r in h.services.catalog.runs(kind="backup") if r["id"] == stale)["status"] == "failed"
    assert h.services.running("prod") is None


def test_second_now_while_one_runs_links_the_running_one_and_starts_nothing(slack_app, tmp_path):
    # GIVEN a backup held at its pg_dump gate
    bindir, gate = gated_bindir(tmp_path)
    h = slack_app(PG_BINDIR=str(bindir))
    try:
        h.command("now")
        progress = wait_for_message(h.fake, CHANNEL, "Backing up prod")
        # WHEN a second /backup now arrives (timing its ack)
        t0 = time.perf_counter()
        second = h.command("now", user="U0BOB")
        ack_s = time.perf_counter() - t0
        # THEN it acks within Slack's bound, says one is running and links its message
        assert second.status == 200 and ack_s < ACK_BOUND_S
        shown = second.responses()[0]
        assert "already running" in shown["text"]
        assert f"/archives/{CHANNEL}/p{progress['ts'].replace('.', '')}" in json.dumps(shown["blocks"])
    finally:
        gate.touch()
    wait_for_message(h.fake, CHANNEL, "complete")
    # AND exactly one backup (one run) was made
    assert len(_backups(h)) == 1
    assert len(h.services.catalog.runs(kind="backup")) == 1


def test_ack_stays_under_three_seconds_while_a_backup_runs(slack_app, tmp_path):
    # GIVEN a backup that is running
    bindir, gate = gated_bindir(tmp_path)
    h = slack_app(PG_BINDIR=str(bindir))
    try:
        h.command("now")
        until(lambda: h.services.running("prod"), what="the backup run to start")
        # WHEN several commands arrive meanwhile THEN each is acknowledged well under 3 s
        for text in ("now", "list", "status", "help", "now prod"):
            t0 = time.perf_counter()
            reply = h.command(text)
            elapsed = time.perf_counter() - t0
            assert reply.status == 200 and elapsed < ACK_BOUND_S, (text, elapsed)
    finally:
        gate.touch()
    wait_for_message(h.fake, CHANNEL, "complete")


def test_slack_retry_of_now_never_starts_a_second_backup(slack_app):
    # GIVEN a /backup now that Slack delivered and the app handled
    h = slack_app()
    body = slash_command_body(text="now", user_id="U0ALICE", channel_id=CHANNEL,
                              response_url=h.fake.response_url("retried"))
    status, _, _ = post(h.url, body, SIGNING_SECRET)
    assert status == 200
    wait_for_message(h.fake, CHANNEL, "complete")
    # WHEN Slack re-sends the very same request, marked as retry 1 and 2
    for n in (1, 2):
        status, _, _ = post(h.url, body, SIGNING_SECRET, retry_num=n)
        assert status == 200
    h.command("list").responses()  # a later request answered: the retries were handled before it
    # THEN still one backup, one channel message, one reply to the user
    assert len(_backups(h)) == 1
    assert len(h.fake.calls("chat.postMessage")) == 1
    assert len(h.fake.responses("retried")) == 1


def test_non_operator_is_refused_and_group_members_are_operators(slack_app, fake_slack):
    # GIVEN operators: a user id and a user group resolved through usergroups.users.list
    fake_slack.set_usergroup("S0DBAS", ["U0BOB"])
    h = slack_app(BACKUP_OPERATORS="U0OPS,S0DBAS")
    # WHEN someone else runs /backup now THEN it is refused, audited, and nothing starts
    refused = h.command("now", user="U0EVE")
    told = refused.responses()[0]
    assert refused.status == 200 and "Only backup operators" in told["text"]
    assert told["response_type"] == "ephemeral"
    assert until(lambda: h.services.catalog.audit_events(action="slack.refused"))[0]["actor"] == "U0EVE"
    # AND the same person may still list
    assert "No backups of any target yet" in h.command("list", user="U0EVE").responses()[0]["text"]
    assert h.fake.calls("chat.postMessage") == [] and _backups(h) == []
    # WHEN a member of the operators' group runs it THEN it runs
    assert "Started" in h.command("now", user="U0BOB").responses()[0]["text"]
    wait_for_message(h.fake, CHANNEL, "complete")
    assert h.fake.calls("usergroups.users.list")[0].params["usergroup"] == "S0DBAS"
    assert h.services.catalog.audit_events(action="backup.start")[0]["actor"] == "U0BOB"


def test_a_failed_group_lookup_refuses_says_why_and_is_asked_again_later(slack_app, fake_slack, monkeypatch):
    import bot.app

    # GIVEN operators given as a user group, and Slack failing the first lookup of its members
    fake_slack.set_usergroup("S0DBAS", ["U0BOB"])
    h = slack_app(BACKUP_OPERATORS="U0OPS,S0DBAS")
    fake_slack.fail_next("usergroups.users.list", error="internal_error")
    # WHEN a member runs /backup now THEN the refusal says Slack could not be asked, not who may
    first = h.command("now", user="U0BOB").responses()[0]["text"]
    assert "Only backup operators" in first and "Slack could not be asked who is in" in first, first
    assert "internal_error" in first and "try again" in first
    # AND a click right after does not ask Slack again (the failure holds for a while)
    assert "Slack could not be asked" in h.command("now", user="U0BOB").responses()[0]["text"]
    assert len(h.fake.calls("usergroups.users.list")) == 1
    # AND once that while is over it asks again, and the member is an operator
    monkeypatch.setattr(bot.app, "FAILED_LOOKUP_SECONDS", 0)
    assert "Started" in h.command("now", user="U0BOB").responses()[0]["text"]
    wait_for_message(h.fake, CHANNEL, "complete")
    assert len(h.fake.calls("usergroups.users.list")) == 2


def test_an_old_member_list_never_grants_rights_when_slack_cannot_be_asked(slack_app, fake_slack, monkeypatch):
    import bot.app

    # GIVEN bob was an operator through a group when it was last looked up
    fake_slack.set_usergroup("S0DBAS", ["U0BOB"])
    h = slack_app(BACKUP_OPERATORS="U0OPS,S0DBAS")
    assert h.ctx.is_operator("U0BOB")
    # WHEN he has been removed, the cached list has expired, and Slack cannot be asked
    fake_slack.set_usergroup("S0DBAS", [])
    monkeypatch.setattr(bot.app, "GROUP_CACHE_SECONDS", 0)
    fake_slack.fail_next("usergroups.users.list", error="missing_scope")
    # THEN he is refused, not let in on the old list
    told = h.command("now", user="U0BOB").responses()[0]["text"]
    assert "Only backup operators" in told and "missing_scope" in told
    assert _backups(h) == []


def test_an_older_group_answer_arriving_late_never_replaces_a_newer_one(slack_app, monkeypatch):
    import threading

    import bot.app

    h = slack_app(BACKUP_OPERATORS="U0OPS,S0DBAS")
    monkeypatch.setattr(bot.app, "GROUP_CACHE_SECONDS", 0)  # every check asks Slack
    first_asked, release_first = threading.Event(), threading.Event()
    answers = iter([["U0BOB"], []])  # the first lookup still has bob; the second, asked later, not

    class Client:
        def usergroups_users_list(self, usergroup: str) -> dict[str, list[str]]:
            users = next(answers)
            if users:  # the first lookup: held until the second one has answered
                first_asked.set()
                assert release_first.wait(10)
            return {"users": users}

    h.ctx.client = Client()  # type: ignore[assignment]
    seen: list[bool] = []
    first = threading.Thread(target=lambda: seen.append(h.ctx.is_operator("U0BOB")))
    first.start()
    assert first_asked.wait(10)
    assert h.ctx.is_operator("U0BOB") is False  # the newer answer: bob was removed
    release_first.set()
    first.join(10)
    # THEN the late, older answer neither grants (it returns the newer list) nor is kept
    assert seen == [False]
    assert h.ctx._groups["S0DBAS"][1] == frozenset()


def test_ack_does_not_wait_for_a_rate_limited_operator_group_lookup(slack_app, fake_slack):
    # GIVEN operators through a user group, and Slack rate-limiting the group lookup (Retry-After: 2)
    fake_slack.set_usergroup("S0DBAS", ["U0BOB"])
    h = slack_app(BACKUP_OPERATORS="U0OPS,S0DBAS")
    fake_slack.fail_next("usergroups.users.list", status=429, retry_after=2)
    # WHEN someone outside the group runs /backup now
    t0 = time.perf_counter()
    refused = h.command("now", user="U0EVE")
    ack_s = time.perf_counter() - t0
    # THEN the ack comes back at once, and the refusal follows privately once the lookup succeeded
    assert refused.status == 200 and ack_s < 1.5, ack_s
    told = refused.responses()[0]
    assert "Only backup operators" in told["text"] and told["response_type"] == "ephemeral"
    assert until(lambda: h.services.catalog.audit_events(action="slack.refused"))[0]["actor"] == "U0EVE"
    assert len(fake_slack.calls("usergroups.users.list")) == 2  # the 429, then the retry
    assert _backups(h) == []


def test_group_operator_is_acked_at_once_and_served_despite_a_rate_limited_lookup(slack_app, fake_slack):
    # GIVEN a member of the operators' group, and Slack rate-limiting the group lookup (Retry-After: 2)
    fake_slack.set_usergroup("S0DBAS", ["U0BOB"])
    h = slack_app(BACKUP_OPERATORS="U0OPS,S0DBAS")
    fake_slack.fail_next("usergroups.users.list", status=429, retry_after=2)
    # WHEN the member runs /backup now
    t0 = time.perf_counter()
    reply = h.command("now", user="U0BOB")
    ack_s = time.perf_counter() - t0
    # THEN the ack comes back at once and the backup still starts and completes
    assert reply.status == 200 and ack_s < 1.5, ack_s
    assert "Started a backup of prod" in reply.responses()[0]["text"]
    wait_for_message(h.fake, CHANNEL, "complete")
    assert len(_backups(h)) == 1 and h.services.catalog.audit_events(action="slack.refused") == []


def test_unknown_target_lists_the_known_ones_and_extra_words_get_usage(slack_app):
    h = slack_app()
    shown = h.command("now staging").responses()[0]
    assert "unknown target 'staging' (known targets: prod)" in shown["text"]
    assert shown["response_type"] == "ephemeral"
    usage = h.command("now prod extra").responses()[0]
    assert "at most one target" in usage["text"] and "/backup now [target]" in json.dumps(usage)
    assert find_message(h.fake, CHANNEL, "Backing up") is None and _backups(h) == []


def test_progress_updates_are_throttled_to_one_per_interval():
    # GIVEN a throttle of 3 s on a controlled clock
    now = [100.0]
    throttle = Throttle(3.0, clock=lambda: now[0])
    # WHEN progress arrives every half second for 7 seconds
    allowed = []
    for _ in range(15):
        allowed.append(throttle.ready())
        now[0] += 0.5
    # THEN the first passes and then at most one per 3 s
    assert [i * 0.5 for i, ok in enumerate(allowed) if ok] == [0.0, 3.0, 6.0]
