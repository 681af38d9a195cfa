"""The backup checklist: which items are due on a day, and who ticked what, when.

Pure parts (items, which cadences are due, folding tick events into state, diffing a checkbox
selection) are plain functions; ``ChecklistStore`` keeps each posted checklist and every tick and
un-tick in the catalog, so the state survives restarts and the history can be audited.

A checklist is versioned: each change bumps the version, and the Slack message's block ids carry
it. A click is diffed against the state *at the version the clicker saw*, so someone whose client
has not refreshed yet cannot un-tick a colleague's item by accident.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlite_utils

from bot.core.catalog import Catalog, iso, parse_iso, register_migrations
from bot.errors import ConfigError, NotFound

CADENCES = ("daily", "weekly", "monthly")
# What the bot can gather by itself for an item (bot/core/evidence.py); None: people only.
EVIDENCE_KINDS = ("backup", "logs", "growth", "retention", "storage", "integrity", "drill", "audit", "supabase")
TEXT_MAX = 75  # a checkbox option's text limit in Block Kit
MAX_ITEMS_PER_CADENCE = 100  # keeps a message under Block Kit's 50 blocks
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Item:
    key: str
    text: str
    cadence: str
    evidence: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "text": self.text, "cadence": self.cadence, "evidence": self.evidence}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Item:
        return cls(d["key"], d["text"], d["cadence"], d.get("evidence"))


# The seed's "Backup Monitoring Checklist".
DEFAULT_ITEMS: tuple[Item, ...] = (
    Item("backup-completed", "Verify the automatic backup completed", "daily", "backup"),
    Item("backup-logs", "Check backup logs", "daily", "logs"),
    Item("size-growth", "Monitor database size growth", "daily", "growth"),
    Item("retention-policy", "Review retention policy", "weekly", "retention"),
    Item("storage-space", "Check available storage space", "weekly", "storage"),
    Item("file-integrity", "Verify backup file integrity", "weekly", "integrity"),
    Item("test-restore", "Perform test restore", "monthly", "drill"),
    Item("procedures", "Review and update procedures", "monthly", None),
    Item("access-logs", "Audit backup access logs", "monthly", "audit"),
)
SUPABASE_ITEM = Item("supabase-backup", "Verify Supabase automatic backup completed", "daily", "supabase")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "item"


def parse_items(data: Mapping[str, Any], where: str) -> dict[str, tuple[Item, ...]]:
    """Items per cadence from a checklist file's ``daily`` / ``weekly`` / ``monthly`` lists.

    An entry is a string (the text) or a table with ``text`` and optional ``key`` and ``evidence``.
    Only the cadences present are returned: the others keep their defaults.
    """
    out: dict[str, tuple[Item, ...]] = {}
    seen: set[str] = set()
    for cadence in CADENCES:
        if cadence not in data:
            continue
        entries = data[cadence]
        if not isinstance(entries, list):
            raise ConfigError(f"{cadence} must be a list of items", where)
        if len(entries) > MAX_ITEMS_PER_CADENCE:
            raise ConfigError(f"{cadence} has more than {MAX_ITEMS_PER_CADENCE} items", where)
        items = []
        for i, entry in enumerate(entries):
            spec = {"text": entry} if isinstance(entry, str) else entry
            if not isinstance(spec, dict) or not isinstance(spec.get("text"), str) or not spec["text"].strip():
                raise ConfigError(f"{cadence}[{i}] needs a text", where)
            text = spec["text"].strip()
            if len(text) > TEXT_MAX:
                raise ConfigError(f"{cadence}[{i}] is longer than {TEXT_MAX} characters (Slack's limit)", where)
            key = str(spec.get("key") or slug(text))
            if key in seen or len(key) > 60:
                raise ConfigError(f"{cadence}[{i}]: key {key!r} is used twice or too long", where)
            evidence = spec.get("evidence")
            if evidence is not None and evidence not in EVIDENCE_KINDS:
                raise ConfigError(f"{cadence}[{i}]: evidence must be one of {', '.join(EVIDENCE_KINDS)}", where)
            seen.add(key)
            items.append(Item(key, text, cadence, evidence))
        out[cadence] = tuple(items)
    return out


def merge_items(overrides: Mapping[str, tuple[Item, ...]], *, supabase: bool) -> tuple[Item, ...]:
    """The defaults with each cadence the file gives replaced; the Supabase item joins the daily
    defaults when platform backups are configured."""
    items: list[Item] = []
    for cadence in CADENCES:
        if cadence in overrides:
            items += overrides[cadence]
            continue
        items += [i for i in DEFAULT_ITEMS if i.cadence == cadence]
        if cadence == "daily" and supabase:
            items.append(SUPABASE_ITEM)
    keys = [i.key for i in items]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"checklist item keys used twice: {', '.join(dupes)}", "CHECKLIST_FILE")
    return tuple(items)


def monthday_in(day: date, monthday: int) -> int:
    """The configured day of month, moved to the month's last day in shorter months."""
    return min(monthday, calendar.monthrange(day.year, day.month)[1])


def due_cadences(day: date, weekday: int, monthday: int) -> tuple[str, ...]:
    """Daily always; weekly on the configured weekday (0 = Monday); monthly on the monthday."""
    due = ["daily"]
    if day.weekday() == weekday:
        due.append("weekly")
    if day.day == monthday_in(day, monthday):
        due.append("monthly")
    return tuple(due)


def items_for(items: Iterable[Item], cadences: Sequence[str]) -> list[Item]:
    return [i for i in items if i.cadence in cadences]


@dataclass(frozen=True)
class Tick:
    user: str
    at: datetime


def fold(events: Iterable[Mapping[str, Any]], *, up_to_version: int | None = None) -> dict[str, Tick]:
    """Current ticks from tick/untick events in order (optionally as they were at a version)."""
    state: dict[str, Tick] = {}
    for e in events:
        if up_to_version is not None and e["version"] > up_to_version:
            continue
        if e["action"] == "tick":
            at = parse_iso(e["at"])
            assert at is not None
            state[e["item_key"]] = Tick(e["user"], at)
        else:
            state.pop(e["item_key"], None)
    return state


def diff(block_keys: Iterable[str], selected: Iterable[str], ticked: Iterable[str]) -> tuple[list[str], list[str]]:
    """(ticks, unticks) that turn ``ticked`` into ``selected`` within one checkbox block."""
    keys = list(block_keys)
    chosen, before = set(selected) & set(keys), set(ticked) & set(keys)
    return [k for k in keys if k in chosen - before], [k for k in keys if k in before - chosen]


@dataclass
class Checklist:
    id: int
    day: date
    cadences: tuple[str, ...]
    items: tuple[Item, ...]
    evidence: dict[str, str]
    channel: str | None
    ts: str | None
    posted_at: datetime
    version: int
    reminded_at: datetime | None

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> Checklist:
        posted = parse_iso(r["posted_at"])
        assert posted is not None
        return cls(r["id"], date.fromisoformat(r["day"]), tuple(r["cadences"].split(",")),
                   tuple(Item.from_json(i) for i in json.loads(r["items"])), json.loads(r["evidence"] or "{}"),
                   r["channel"], r["ts"], posted, r["version"], parse_iso(r["reminded_at"]))


@dataclass
class Change:
    ticks: list[str] = field(default_factory=list)
    unticks: list[str] = field(default_factory=list)
    version: int = 0
    unclear: bool = False  # the click could not be told apart: nothing recorded, the message is shown afresh

    @property
    def changed(self) -> bool:
        return bool(self.ticks or self.unticks)


def _m1(db: sqlite_utils.Database) -> None:
    db.table("checklists").create({
        "id": int, "day": str, "cadences": str, "items": str, "evidence": str, "channel": str, "ts": str,
        "posted_at": str, "version": int, "reminded_at": str, "created_by": str,
    }, pk="id")
    db.table("checklists").create_index(["day"])
    db.table("checklists").create_index(["channel", "ts"])
    db.table("checklist_events").create({
        "id": int, "checklist_id": int, "item_key": str, "action": str, "user": str, "at": str, "version": int,
    }, pk="id", foreign_keys=[("checklist_id", "checklists", "id")])
    db.table("checklist_events").create_index(["checklist_id", "id"])


register_migrations("checklist", [_m1])


class ChecklistStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        catalog.migrate()  # this module's tables, if the catalog was opened before the import

    def create(self, day: date, cadences: Sequence[str], items: Sequence[Item], evidence: Mapping[str, str],
               *, now: datetime, created_by: str) -> Checklist:
        with self.catalog.tx() as db:
            table = db.table("checklists")  # last_pk lives on this Table object
            table.insert({"day": day.isoformat(), "cadences": ",".join(cadences),
                          "items": json.dumps([i.as_json() for i in items]), "evidence": json.dumps(dict(evidence)),
                          "posted_at": iso(now), "version": 1, "created_by": created_by})
            checklist_id = int(table.last_pk)  # type: ignore[arg-type]
        return self.get(checklist_id)

    def set_message(self, checklist_id: int, channel: str, ts: str) -> None:
        with self.catalog.tx() as db:
            db.table("checklists").update(checklist_id, {"channel": channel, "ts": ts})

    def get(self, checklist_id: int) -> Checklist:
        rows = list(self.catalog.db.query("SELECT * FROM checklists WHERE id = ?", [checklist_id]))
        if not rows:
            raise NotFound(f"no checklist {checklist_id}")
        return Checklist.from_row(rows[0])

    def by_message(self, channel: str, ts: str) -> Checklist | None:
        rows = list(self.catalog.db.query("SELECT * FROM checklists WHERE channel = ? AND ts = ?", [channel, ts]))
        return Checklist.from_row(rows[0]) if rows else None

    def for_day(self, day: date, *, posted_only: bool = True) -> list[Checklist]:
        """The day's checklists, newest first."""
        sql = "SELECT * FROM checklists WHERE day = ?" + (" AND ts IS NOT NULL" if posted_only else "")
        return [Checklist.from_row(r) for r in self.catalog.db.query(sql + " ORDER BY id DESC", [day.isoformat()])]

    def events(self, checklist_id: int) -> list[dict[str, Any]]:
        return list(self.catalog.db.query(
            "SELECT * FROM checklist_events WHERE checklist_id = ? ORDER BY id", [checklist_id]))

    def state(self, checklist_id: int) -> dict[str, Tick]:
        return fold(self.events(checklist_id))

    def apply_selection(self, checklist_id: int, block_keys: Sequence[str], selected: Iterable[str],
                        seen_version: int, user: str, now: datetime) -> Change:
        """Record what one click changed: the diff between the state the user saw and what they
        selected in that block, applied to the current state. Bumps the version if anything changed."""
        with self.catalog.tx() as db:
            row = next(db.query("SELECT version FROM checklists WHERE id = ?", [checklist_id]), None)
            if row is None:
                raise NotFound(f"no checklist {checklist_id}")
            events = self.events(checklist_id)
            seen_v = min(seen_version, row["version"])
            seen = fold(events, up_to_version=seen_v)
            current = fold(events)
            # One click toggles one box. The client shows the state of the version it was sent,
            # and maybe also this user's own later clicks (Slack shows a box as they set it
            # before our update arrives: a quick tick-then-untick), or not (a second, stale
            # client of theirs). Whichever view explains the click as one toggle is taken; when
            # both do, differently, or neither does, it is not guessed: nothing is recorded and
            # the caller shows the message afresh, for the user to click again.
            own = fold([e for e in events if e["version"] <= seen_v or e["user"] == user])
            by_version, by_own = diff(block_keys, selected, seen), diff(block_keys, selected, own)
            single = [d for d in (by_version, by_own) if len(d[0]) + len(d[1]) == 1]
            if not single or (len(single) == 2 and single[0] != single[1]):
                return Change(version=row["version"], unclear=True)
            ticks, unticks = single[0]
            change = Change([k for k in ticks if k not in current], [k for k in unticks if k in current],
                            row["version"])
            if not change.changed:
                return change
            change.version = row["version"] + 1
            for action, keys in (("tick", change.ticks), ("untick", change.unticks)):
                for key in keys:
                    db.table("checklist_events").insert({"checklist_id": checklist_id, "item_key": key, "action": action,
                                                   "user": user, "at": iso(now), "version": change.version})
            db.table("checklists").update(checklist_id, {"version": change.version})
        return change

    def mark_reminded(self, checklist_id: int, now: datetime) -> None:
        with self.catalog.tx() as db:
            db.table("checklists").update(checklist_id, {"reminded_at": iso(now)})

    def history(self, limit: int = 30) -> list[tuple[Checklist, list[dict[str, Any]]]]:
        rows = self.catalog.db.query("SELECT * FROM checklists ORDER BY day DESC, id DESC LIMIT ?", [limit])
        return [(c, self.events(c.id)) for c in (Checklist.from_row(r) for r in rows)]


def parse_weekday(raw: str, where: str) -> int:
    text = raw.strip().lower()
    for i, name in enumerate(WEEKDAYS):
        if text in (name, name[:3]):
            return i
    raise ConfigError(f"{raw!r} is not a weekday name like monday", where)
