"""The checklist's pure parts and its store: which items are due on a day, the checklist file,
folding and diffing ticks, versioned clicks, and the Block Kit it renders within Slack's limits."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from bot.core.catalog import Catalog
from bot.core.checklist import (
    DEFAULT_ITEMS,
    ChecklistStore,
    Item,
    Tick,
    diff,
    due_cadences,
    fold,
    items_for,
    merge_items,
)
from bot.core.schedule_settings import ScheduleSettings
from bot.errors import ConfigError
from bot.render.checklist import checklist_message, layout, parse_block_id, reminder_message
from bot.render.common import to_text
from tests.fakes.slack_api import validate_blocks

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY = 0


@pytest.mark.parametrize("day, weekday, monthday, expected", [
    (date(2024, 6, 4), MONDAY, 1, ("daily",)),  # a Tuesday mid-month
    (date(2024, 6, 3), MONDAY, 1, ("daily", "weekly")),  # a Monday
    (date(2024, 7, 1), MONDAY, 1, ("daily", "weekly", "monthly")),  # Monday the 1st
    (date(2024, 6, 1), MONDAY, 1, ("daily", "monthly")),  # Saturday the 1st
    (date(2024, 6, 7), 4, 15, ("daily", "weekly")),  # Friday with CHECKLIST_WEEKDAY=friday
    (date(2024, 2, 29), MONDAY, 31, ("daily", "monthly")),  # day 31 falls on February's last day
    (date(2024, 2, 28), MONDAY, 31, ("daily",)),
])
def test_weekly_and_monthly_items_appear_only_on_their_days(day, weekday, monthday, expected):
    assert due_cadences(day, weekday, monthday) == expected


def test_defaults_are_the_seed_checklist_and_supabase_joins_the_daily_items_when_configured():
    texts = [i.text for i in items_for(DEFAULT_ITEMS, ("daily",))]
    assert texts == ["Verify the automatic backup completed", "Check backup logs", "Monitor database size growth"]
    assert [i.text for i in items_for(DEFAULT_ITEMS, ("monthly",))] == [
        "Perform test restore", "Review and update procedures", "Audit backup access logs"]
    with_supabase = merge_items({}, supabase=True)
    assert "Verify Supabase automatic backup completed" in [i.text for i in with_supabase if i.cadence == "daily"]


def test_checklist_file_replaces_the_cadences_it_lists_and_sets_times(tmp_path, make_settings):
    path = tmp_path / "checklist.toml"
    path.write_text('time = "08:30"\ndeadline = 17:45:00\nweekday = "friday"\n'
                    'weekly = ["Rotate the off-site disk", {text = "Check storage", evidence = "storage"}]\n')
    sched = ScheduleSettings.from_settings(make_settings("postgresql://u@h/db", CHECKLIST_FILE=str(path)))
    assert sched.checklist_time is not None and sched.checklist_time.strftime("%H:%M") == "08:30"
    assert sched.checklist_weekday == 4
    assert sched.checklist_deadline is not None and sched.checklist_deadline.strftime("%H:%M") == "17:45"
    weekly = items_for(sched.items, ("weekly",))
    assert [(i.key, i.evidence) for i in weekly] == [("rotate-the-off-site-disk", None), ("check-storage", "storage")]
    assert len(items_for(sched.items, ("daily",))) == 3  # untouched cadences keep the defaults
    # The environment wins over the file.
    env = ScheduleSettings.from_settings(make_settings("postgresql://u@h/db", CHECKLIST_FILE=str(path),
                                                       CHECKLIST_TIME="10:00"))
    assert env.checklist_time is not None and env.checklist_time.hour == 10


@pytest.mark.parametrize("content, problem", [
    ({"daily": ["x" * 76]}, "longer than 75"),
    ({"daily": [{"text": "A", "evidence": "vibes"}]}, "evidence must be one of"),
    ({"daily": ["Same", "Same"]}, "used twice"),
    ({"hourly": ["Stretch"]}, "unknown keys: hourly"),
])
def test_a_bad_checklist_file_is_one_line_naming_the_file(tmp_path, make_settings, content, problem):
    path = tmp_path / "checklist.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=problem) as err:
        ScheduleSettings.from_settings(make_settings("postgresql://u@h/db", CHECKLIST_FILE=str(path)))
    assert str(path) in err.value.message


@pytest.mark.parametrize("keys, selected, ticked, expected", [
    (["a", "b", "c"], ["a"], [], (["a"], [])),
    (["a", "b", "c"], ["a", "b"], ["a"], (["b"], [])),
    (["a", "b", "c"], [], ["a", "c"], ([], ["a", "c"])),
    (["a", "b"], ["b"], ["a", "z"], (["b"], ["a"])),  # "z" lives in another block: untouched
])
def test_diff_finds_ticks_and_unticks_within_one_block(keys, selected, ticked, expected):
    assert diff(keys, selected, ticked) == expected


def _two_item_checklist(tmp_path):
    store = ChecklistStore(Catalog(tmp_path / "c.db"))
    items = [Item("a", "A", "daily"), Item("b", "B", "daily")]
    c = store.create(date(2024, 6, 3), ("daily",), items, {}, now=datetime(2024, 6, 3, 7, tzinfo=UTC), created_by="t")
    return store, c, datetime(2024, 6, 3, 7, 14, tzinfo=UTC)


def test_a_stale_client_cannot_untick_a_colleagues_item(tmp_path):
    # GIVEN a checklist where carol ticked "a" (version 2)
    store, c, at = _two_item_checklist(tmp_path)
    assert store.apply_selection(c.id, ["a", "b"], ["a"], 1, "U0CAROL", at).version == 2
    # WHEN bob, whose Slack still shows version 1, ticks "b" (his selection lacks carol's "a")
    change = store.apply_selection(c.id, ["a", "b"], ["b"], 1, "U0BOB", at)
    # THEN only bob's tick is recorded, and carol's stays
    assert (change.ticks, change.unticks, change.version) == (["b"], [], 3)
    assert {k: t.user for k, t in store.state(c.id).items()} == {"a": "U0CAROL", "b": "U0BOB"}
    # and an up-to-date untick works
    assert store.apply_selection(c.id, ["a", "b"], ["b"], 3, "U0BOB", at).unticks == ["a"]
    assert [e["action"] for e in store.events(c.id)] == ["tick", "tick", "untick"]
    assert fold(store.events(c.id), up_to_version=2) == {"a": Tick("U0CAROL", at)}


def test_a_quick_tick_then_untick_by_the_same_person_counts_before_slack_refreshes(tmp_path):
    store, c, at = _two_item_checklist(tmp_path)
    # GIVEN carol ticked "a" by mistake, and bob ticked "b", both on version 1's message
    assert store.apply_selection(c.id, ["a", "b"], ["a"], 1, "U0CAROL", at).version == 2
    assert store.apply_selection(c.id, ["a", "b"], ["b"], 1, "U0BOB", at).version == 3
    # WHEN carol unticks "a" at once, her Slack still on version 1 (showing her own tick, not bob's)
    change = store.apply_selection(c.id, ["a", "b"], [], 1, "U0CAROL", at)
    # THEN her correction wins, and bob's tick, which she had not seen, stays
    assert (change.ticks, change.unticks) == ([], ["a"])
    assert {k: t.user for k, t in store.state(c.id).items()} == {"b": "U0BOB"}


def test_a_second_stale_client_of_the_same_person_cannot_revert_what_they_did_elsewhere(tmp_path):
    store, c, at = _two_item_checklist(tmp_path)
    # carol ticks "a" on her phone (version 2); her desktop still shows version 1, where she ticks "b"
    assert store.apply_selection(c.id, ["a", "b"], ["a"], 1, "U0CAROL", at).version == 2
    assert store.apply_selection(c.id, ["a", "b"], ["b"], 1, "U0CAROL", at).ticks == ["b"]
    assert set(store.state(c.id)) == {"a", "b"}  # her phone's tick stays
    # bob ticks "a"; carol unticks it on her phone; her desktop, on bob's version, ticks "b"
    store2, c2, _ = _two_item_checklist(tmp_path / "second")
    v = store2.apply_selection(c2.id, ["a", "b"], ["a"], 1, "U0BOB", at).version
    assert store2.apply_selection(c2.id, ["a", "b"], [], v, "U0CAROL", at).unticks == ["a"]
    change = store2.apply_selection(c2.id, ["a", "b"], ["a", "b"], v, "U0CAROL", at)
    assert (change.ticks, change.unticks) == (["b"], [])
    assert set(store2.state(c2.id)) == {"b"}  # "a" is not re-ticked in her name


def test_a_click_that_cannot_be_told_apart_records_nothing_instead_of_guessing(tmp_path):
    store, c, at = _two_item_checklist(tmp_path)
    keys = ["a", "b"]
    # carol ticks "a" then "b" from a client on version 1; bob, up to date, unticks "b"
    store.apply_selection(c.id, keys, ["a"], 1, "U0CAROL", at)
    store.apply_selection(c.id, keys, ["b"], 1, "U0CAROL", at)
    v = store.apply_selection(c.id, keys, ["a"], 3, "U0BOB", at).version
    # WHEN carol's version-1 client sends [b] (her untick of "a", or a tick of "b" from a stale view)
    change = store.apply_selection(c.id, keys, ["b"], 1, "U0CAROL", at)
    # THEN nothing is recorded (bob's untick of "b" is not undone) and the message is to be redrawn
    assert change.unclear and not change.changed and change.version == v
    assert set(store.state(c.id)) == {"a"}
    # AND a colleague's untick is not undone by a stale client of the person who ticked
    store2, c2, _ = _two_item_checklist(tmp_path / "second")
    store2.apply_selection(c2.id, keys, ["a"], 1, "U0CAROL", at)
    v2 = store2.apply_selection(c2.id, keys, [], 2, "U0BOB", at).version
    change = store2.apply_selection(c2.id, keys, ["a", "b"], 1, "U0CAROL", at)  # her client still shows "a"
    assert (change.ticks, change.unticks) == (["b"], []) and change.version == v2 + 1
    assert set(store2.state(c2.id)) == {"b"}


def test_rendered_checklist_splits_long_groups_and_stays_within_slack_limits(tmp_path):
    store = ChecklistStore(Catalog(tmp_path / "c.db"))
    items = [Item(f"d{i}", f"Daily chore number {i} " + "x" * 60, "daily", "backup") for i in range(12)]
    items += [Item("w1", "Weekly chore", "weekly")]
    evidence = {"backup": "last backup 02:00, 183 MB, verified ✓ and a long tail " + "y" * 60}
    c = store.create(date(2024, 6, 3), ("daily", "weekly"), items, evidence,
                     now=datetime(2024, 6, 3, 7, tzinfo=UTC), created_by="t")
    store.apply_selection(c.id, [i.key for i in items[:10]], ["d0"], 1, "U0CAROL", datetime(2024, 6, 3, 7, 14, tzinfo=UTC))
    c = store.get(c.id)
    msg = checklist_message(c, store.state(c.id), BERLIN)
    assert validate_blocks(msg["blocks"]) == []
    groups = layout(c.items)
    assert [len(g.items) for g in groups] == [10, 2, 1]
    boxes = [b for b in msg["blocks"] if b["type"] == "actions"]
    assert [parse_block_id(b["block_id"]) for b in boxes] == [(c.id, 0, 2), (c.id, 1, 2), (c.id, 2, 2)]
    first = boxes[0]["elements"][0]
    assert first["initial_options"] == [first["options"][0]]
    assert first["options"][0]["description"]["text"].startswith("✓ <@U0CAROL> 09:14 · last backup")
    assert all(len(o["description"]["text"]) <= 75 for b in boxes for o in b["elements"][0]["options"]
               if "description" in o)


def test_reminder_lists_only_unticked_items_and_mentions_owners(tmp_path):
    store = ChecklistStore(Catalog(tmp_path / "c.db"))
    items = [Item("a", "Check backup logs", "daily"), Item("b", "Perform test restore", "monthly")]
    c = store.create(date(2024, 6, 3), ("daily", "monthly"), items, {}, now=datetime(2024, 6, 3, 7, tzinfo=UTC),
                     created_by="t")
    store.apply_selection(c.id, ["a"], ["a"], 1, "U0CAROL", datetime(2024, 6, 3, 8, tzinfo=UTC))
    msg = reminder_message(store.get(c.id), store.state(c.id), ["U0OWNER", "S0TEAM"])
    text = to_text(msg["blocks"])
    assert "Perform test restore" in text and "Check backup logs" not in text
    assert "<@U0OWNER>" in text and "<!subteam^S0TEAM>" in text
