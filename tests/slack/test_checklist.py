"""The backup checklist over the fake Slack Web API, with signed block_actions payloads: posting,
ticks by two people, an un-tick, who-and-when beside each item in the configured zone, state
that survives a restart, the deadline reminder, and `/backup checklist` / `/backup drill`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.cli import main
from bot.core import checklist_jobs
from bot.core.alerts import Alerts
from bot.core.checklist import ChecklistStore
from bot.core.jobs import Runtime
from bot.core.schedule_settings import ScheduleSettings
from bot.render.common import to_text
from tests.fixtures.cli import empty_env_file
from tests.fixtures.slack import BOT_TOKEN, CHANNEL, SlackHarness
from tests.slack.support import until, wait_for_message

BERLIN_ENV = {"BACKUP_TIMEZONE": "Europe/Berlin", "CHECKLIST_OWNERS": "U0OWNER,S0BACKUPTEAM"}
MONDAY_0900 = datetime(2024, 6, 3, 7, 0, tzinfo=UTC)  # 09:00 CEST, Monday 3 June 2024


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, hh: int, mm: int) -> None:
        """Set the time of day (UTC) on the same date."""
        self.now = self.now.replace(hour=hh, minute=mm)


def harness(slack_app: Any, clock: Clock, **env: str) -> tuple[SlackHarness, Runtime]:
    h = slack_app(**{**BERLIN_ENV, **env})
    h.services.clock = clock
    return h, Runtime(h.services, ScheduleSettings.from_settings(h.services.settings), h.ctx.notifier)


def checkbox_with(message: dict[str, Any], key: str) -> dict[str, Any]:
    for block in message["blocks"]:
        for el in block.get("elements", []) if block["type"] == "actions" else []:
            if el["type"] == "checkboxes" and any(o["value"] == key for o in el["options"]):
                return el
    raise AssertionError(f"no checkbox for {key}")


def click(h: SlackHarness, ts: str, user: str, key: str, *, on: bool) -> None:
    """What Slack sends when `user` toggles one box: the block's whole selection as their client shows it."""
    updates = len(h.fake.calls("chat.update"))
    el = checkbox_with(h.fake.message(CHANNEL, ts), key)
    selected = [o for o in el.get("initial_options", []) if o["value"] != key]
    if on:
        selected.append(next(o for o in el["options"] if o["value"] == key))
    status, _body = h.click(CHANNEL, ts, el["action_id"], user, selected_options=selected)
    assert status == 200
    h.fake.wait_for("chat.update", count=updates + 1)


def description(h: SlackHarness, ts: str, key: str) -> str:
    el = checkbox_with(h.fake.message(CHANNEL, ts), key)
    option = next(o for o in el["options"] if o["value"] == key)
    return option.get("description", {}).get("text", "")


def ticked(h: SlackHarness, ts: str) -> set[str]:
    msg = h.fake.message(CHANNEL, ts)
    return {o["value"] for b in msg["blocks"] if b["type"] == "actions"
            for el in b["elements"] for o in el.get("initial_options", [])}


def test_ticks_by_two_people_and_an_untick_show_who_and_when(slack_app):
    # GIVEN Monday's checklist posted at 09:00 Berlin time
    clock = Clock(MONDAY_0900)
    h, rt = harness(slack_app, clock)
    checklist = checklist_jobs.post_checklist(rt)
    assert checklist is not None and checklist.ts
    ts = checklist.ts
    text = to_text(h.fake.message(CHANNEL, ts)["blocks"])
    assert "Verify the automatic backup completed" in text and "Review retention policy" in text  # daily + weekly
    assert "Perform test restore" not in text  # monthly items wait for the 1st
    assert "⚠ no backup yet" in description(h, ts, "backup-completed")  # evidence the bot gathered
    # WHEN carol ticks one item at 09:14 and bob another at 09:20
    clock.at(7, 14)
    click(h, ts, "U0CAROL", "backup-completed", on=True)
    clock.at(7, 20)
    click(h, ts, "U0BOB", "backup-logs", on=True)
    # THEN the message shows each person beside their item, in local time
    assert description(h, ts, "backup-completed").startswith("✓ <@U0CAROL> 09:14")
    assert description(h, ts, "backup-logs").startswith("✓ <@U0BOB> 09:20")
    assert ticked(h, ts) == {"backup-completed", "backup-logs"}
    # WHEN dave un-ticks carol's item
    clock.at(7, 31)
    click(h, ts, "U0DAVE", "backup-completed", on=False)
    # THEN it shows as open again and bob's tick stays
    assert ticked(h, ts) == {"backup-logs"}
    assert not description(h, ts, "backup-completed").startswith("✓")
    assert "1 of 6 done" in h.fake.message(CHANNEL, ts)["text"]
    # and every change is recorded with who and when
    events = ChecklistStore(h.services.catalog).events(checklist.id)
    assert [(e["user"], e["action"], e["item_key"]) for e in events] == [
        ("U0CAROL", "tick", "backup-completed"), ("U0BOB", "tick", "backup-logs"),
        ("U0DAVE", "untick", "backup-completed")]
    # each update used fresh block ids and valid blocks (the fake rejects invalid ones)
    assert h.fake.warnings == []
    assert all(c.ok for c in h.fake.calls("chat.update"))


def test_restart_keeps_the_state_and_a_new_process_handles_clicks(slack_app):
    clock = Clock(MONDAY_0900)
    h1, rt1 = harness(slack_app, clock)
    checklist = checklist_jobs.post_checklist(rt1)
    assert checklist is not None and checklist.ts
    clock.at(7, 14)
    click(h1, checklist.ts, "U0CAROL", "backup-completed", on=True)
    # WHEN the bot restarts (a new app on the same catalog)
    h2, _rt2 = harness(slack_app, clock)
    clock.at(7, 40)
    click(h2, checklist.ts, "U0BOB", "storage-space", on=True)
    # THEN carol's tick from before the restart is still there, beside bob's new one
    assert description(h2, checklist.ts, "backup-completed").startswith("✓ <@U0CAROL> 09:14")
    assert description(h2, checklist.ts, "storage-space").startswith("✓ <@U0BOB> 09:40")
    # and `/backup checklist` shows the same state privately
    reply = h2.command("checklist", user="U0ERIN")
    shown = json.dumps(reply.responses()[0])
    assert "U0CAROL" in shown and "09:14" in shown and "2 of 6 done" in shown
    assert reply.responses()[0]["response_type"] == "ephemeral"


def test_reminder_in_the_thread_lists_only_unticked_items_and_mentions_the_owners(slack_app):
    clock = Clock(MONDAY_0900)
    h, rt = harness(slack_app, clock)
    checklist = checklist_jobs.post_checklist(rt)
    assert checklist is not None and checklist.ts
    for key in ("backup-completed", "backup-logs", "size-growth", "retention-policy"):
        click(h, checklist.ts, "U0CAROL", key, on=True)
    clock.at(15, 0)  # 17:00 Berlin: CHECKLIST_DEADLINE
    assert checklist_jobs.remind(rt) is True
    (reply,) = h.fake.replies(CHANNEL, checklist.ts)
    assert "Check available storage space" in reply["text"] and "Verify backup file integrity" in reply["text"]
    assert "Check backup logs" not in reply["text"] and "Review retention policy" not in reply["text"]
    assert "<@U0OWNER>" in reply["text"] and "<!subteam^S0BACKUPTEAM>" in reply["text"]
    # all done: no reminder
    for key in ("storage-space", "file-integrity"):
        click(h, checklist.ts, "U0CAROL", key, on=True)
    assert checklist_jobs.remind(rt) is False
    assert "All 6 done" in h.fake.message(CHANNEL, checklist.ts)["text"]


def test_weekly_and_monthly_items_appear_only_on_their_days(slack_app):
    clock = Clock(datetime(2024, 6, 4, 7, 0, tzinfo=UTC))  # Tuesday 4 June
    h, rt = harness(slack_app, clock)
    tuesday = checklist_jobs.post_checklist(rt)
    assert tuesday is not None and [i.cadence for i in tuesday.items] == ["daily"] * 3
    clock.now = datetime(2024, 6, 1, 7, 0, tzinfo=UTC)  # Saturday 1 June
    saturday = checklist_jobs.post_checklist(rt)
    assert saturday is not None and {i.cadence for i in saturday.items} == {"daily", "monthly"}
    assert "Perform test restore" in to_text(h.fake.message(CHANNEL, saturday.ts or "")["blocks"])
    # the daily job does not post a second checklist for a day that has one
    assert checklist_jobs.post_checklist(rt, only_if_new=True) is None


def test_backup_checklist_posts_todays_checklist_when_there_is_none(slack_app):
    clock = Clock(MONDAY_0900)
    h, _rt = harness(slack_app, clock)
    reply = h.command("checklist")
    assert "posting it now" in json.dumps(reply.responses()[0])
    posted = wait_for_message(h.fake, CHANNEL, "Backup checklist")
    assert "Mon 03 Jun 2024" in posted["text"]


def test_two_callers_at_the_same_moment_post_one_checklist(slack_app, monkeypatch):
    import threading

    clock = Clock(MONDAY_0900)
    h, rt = harness(slack_app, clock)
    # GIVEN two callers (the 09:00 job, a /backup checklist) both past the "is there one?" check,
    # gathering evidence at the same time
    both_gathering = threading.Barrier(2)
    real = checklist_jobs.gather_evidence

    def slow_gather(*a: Any, **k: Any) -> Any:
        try:  # met only if the two run side by side; taking turns, the first gives up waiting
            both_gathering.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass
        return real(*a, **k)

    monkeypatch.setattr(checklist_jobs, "gather_evidence", slow_gather)
    made: list[Any] = []
    callers = [threading.Thread(target=lambda: made.append(checklist_jobs.post_checklist(rt, only_if_new=True)))
               for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(20)
    # THEN one checklist is made and posted; the other caller finds it and posts nothing
    assert sorted(m is None for m in made) == [False, True], made
    posted = [m for m in h.fake.messages(CHANNEL) if m.get("text", "").startswith("Backup checklist")]
    assert len(posted) == 1 and len(ChecklistStore(h.services.catalog).for_day(MONDAY_0900.date())) == 1


def test_after_a_failed_post_the_next_call_posts_todays_checklist(slack_app):
    clock = Clock(MONDAY_0900)
    h, rt = harness(slack_app, clock)
    # GIVEN the 09:00 post failed (Slack refused it)
    h.fake.fail_next("chat.postMessage", error="channel_not_found")
    first = checklist_jobs.post_checklist(rt, only_if_new=True)
    assert first is not None and first.ts is None
    # WHEN /backup checklist (or the catch-up) asks again a minute later THEN it is posted
    clock.now += timedelta(minutes=1)
    again = checklist_jobs.post_checklist(rt, only_if_new=True)
    assert again is not None and again.ts
    assert len([m for m in h.fake.messages(CHANNEL) if m.get("text", "").startswith("Backup checklist")]) == 1


def test_a_click_that_cannot_be_told_apart_redraws_the_message_and_records_nothing(slack_app):
    clock = Clock(MONDAY_0900)
    h, rt = harness(slack_app, clock)
    cl = checklist_jobs.post_checklist(rt)
    v1 = h.fake.message(CHANNEL, cl.ts)
    block = next(b for b in v1["blocks"] if b["type"] == "actions")
    a, b = (o["value"] for o in block["elements"][0]["options"][:2])

    def on_v1(user: str, selected: list[str]) -> Any:  # a client still showing version 1
        return checklist_jobs.apply_click(rt, channel=CHANNEL, ts=cl.ts, block_id=block["block_id"],
                                          selected=selected, user=user)

    on_v1("U0CAROL", [a])
    on_v1("U0CAROL", [b])
    current = h.fake.message(CHANNEL, cl.ts)
    bob_block = next(bl for bl in current["blocks"] if bl["type"] == "actions")
    checklist_jobs.apply_click(rt, channel=CHANNEL, ts=cl.ts, block_id=bob_block["block_id"], selected=[a],
                               user="U0BOB")  # bob, up to date, unticks b
    updates = len(h.fake.calls("chat.update"))
    # WHEN carol's version-1 client sends [b]: her untick of a, or a tick of b from a stale view
    change = on_v1("U0CAROL", [b])
    # THEN nothing is recorded, and the message is redrawn so her client shows the real state
    assert change.unclear and not change.changed
    assert ticked(h, cl.ts) == {a} and len(h.fake.calls("chat.update")) == updates + 1


def test_backup_drill_is_for_operators_and_posts_the_result(slack_app):
    h, _rt = harness(slack_app, Clock(datetime.now(UTC)), BACKUP_OPERATORS="U0OPS")
    refused = h.command("drill", user="U0ALICE")
    told = refused.responses()[0]  # after the ack: the permission check may call Slack
    assert "Only backup operators" in told["text"] and told["response_type"] == "ephemeral"
    h.services.backup(actor="t", source="cli")
    reply = h.command("drill prod", user="U0OPS")
    assert "Restore drill of *prod* started" in json.dumps(reply.responses()[0])
    result = wait_for_message(h.fake, CHANNEL, "Restore drill of prod", timeout=60)
    assert "(RTO)" in result["text"] and "asked by <@U0OPS>" in result["text"]
    until(lambda: h.services.catalog.runs(kind="drill"), what="the drill run")


def test_cli_posts_a_checklist_and_prints_the_history(slack_app, fake_slack, crm_db, tmp_path, monkeypatch, capsys):
    env = {"DATABASE_URL": crm_db, "BACKUP_DIR": str(tmp_path / "backups"), "BACKUPBOT_DB": str(tmp_path / "catalog.db"),
           "BACKUP_TARGET": "prod", "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_CHANNEL": CHANNEL,
           "SLACK_API_URL": fake_slack.url, "BACKUP_TIMEZONE": "Europe/Berlin"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["--env-file", empty_env_file(tmp_path), "checklist", "post", "monthly"]) == 0
    assert "posted checklist #1 (monthly, 3 items)" in capsys.readouterr().out
    (posted,) = fake_slack.messages(CHANNEL)
    assert "monthly" in posted["text"] and "Perform test restore" in to_text(posted["blocks"])
    assert main(["--env-file", empty_env_file(tmp_path), "checklist", "history"]) == 0
    out = capsys.readouterr().out
    assert "monthly: 0/3 done" in out and "☐  Audit backup access logs" in out


def test_dead_mans_switch_alert_and_recovery_reach_the_channel_through_the_alert_poster(slack_app):
    from tests.core.test_monitoring import add_backup_row

    clock = Clock(MONDAY_0900)
    h, rt = harness(slack_app, clock)
    add_backup_row(h.services.catalog, "prod", MONDAY_0900 - timedelta(hours=30))
    rt.monitor.check_stale(clock())
    alert = wait_for_message(h.fake, CHANNEL, "No recent backup")
    assert "again" not in alert["text"] and "no good backup of prod for 30h" in alert["text"]
    add_backup_row(h.services.catalog, "prod", MONDAY_0900)
    rt.monitor.check_stale(clock())
    until(lambda: any("Recovered" in r.get("text", "") for r in h.fake.replies(CHANNEL, alert["ts"])),
          what="the recovery in the alert's thread")
    assert Alerts(h.services.catalog).open_alerts() == []
