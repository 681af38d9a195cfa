"""The restore plan for a Supabase backup: which archive entries pg_restore runs, in which order,
and which need someone with more rights than `postgres` (they become the report's to-do list).

Every entry is decided against the destination (supabase_target.TargetState), so the same rules
serve a fresh project (`--to`), the project itself (`--in-place`) and a new database where the
platform's schemas do not exist (`--into`, restored as plain schemas). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bot.core.supabase_target import Name, TargetState
from bot.core.toc import TocEntry

SQL_EDITOR = "run as a superuser (on Supabase: the dashboard's SQL editor)"


@dataclass(frozen=True)
class Todo:
    entry: TocEntry
    why: str


@dataclass
class Plan:
    entries: list[TocEntry] = field(default_factory=list)  # what pg_restore runs, in this order
    todo: list[Todo] = field(default_factory=list)  # left out: needs more rights than ours
    kept_live: list[str] = field(default_factory=list)  # in-place: left as the destination has it
    moved: list[TocEntry] = field(default_factory=list)  # app triggers on platform tables, last
    managed_data: list[TocEntry] = field(default_factory=list)  # platform tables' rows, parents first
    missing: list[str] = field(default_factory=list)  # platform tables the destination lacks
    skipped: int = 0  # platform objects the destination already provides
    extension_schemas: set[str] = field(default_factory=set)  # schemas kept extensions go into
    provided: frozenset[str] = frozenset()  # platform schemas whose definitions the target has


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if len(name) > 1 and name[0] == name[-1] == '"' else name


def _split_known(tag: str, known: Iterable[str]) -> tuple[str, str]:
    """'objects Avatars are readable' -> ('objects', 'Avatars are readable'), using the names the
    destination has (names may contain spaces); the first word otherwise."""
    for name in sorted(known, key=len, reverse=True):
        if tag.startswith(name + " "):
            return name, tag[len(name) + 1:]
    head, _, rest = tag.partition(" ")
    return head, rest


def parents_first(data: Sequence[TocEntry], foreign_keys: Iterable[tuple[Name, Name]]) -> list[TocEntry]:
    """Order TABLE DATA entries so that every referenced table is loaded before the tables that
    reference it (stable: the archive's order breaks ties; a cycle keeps its archive order, after
    whatever can go first)."""
    by_name = {(e.schema, e.tag): e for e in data}
    parents: dict[Name, set[Name]] = {n: set() for n in by_name}
    for child, parent in foreign_keys:
        if child in parents and parent in by_name and child != parent:
            parents[child].add(parent)
    done: set[Name] = set()
    ordered: list[TocEntry] = []
    pending = [(e.schema, e.tag) for e in data]
    while pending:
        ready = next((n for n in pending if parents[n] <= done), pending[0])  # pending[0]: a cycle
        pending.remove(ready)
        done.add(ready)
        ordered.append(by_name[ready])
    return ordered


class _Planner:
    def __init__(self, target: TargetState, *, mode: str, managed: Iterable[str], reserved: frozenset[str],
                 extension_schemas: dict[str, str]) -> None:
        self.t = target
        self.mode = mode
        self.reserved = reserved
        self.extension_schemas = extension_schemas
        self.provided = frozenset(s for s in managed if s in target.schemas)
        self.plan = Plan(provided=self.provided)
        self.kept_extensions: set[str] = set()
        self.kept_event_triggers: set[str] = set()
        self.our_publications = {p for p, owner in target.publications.items() if target.may_act_as(owner)}
        self.recreated_tables: set[Name] = set()

    # -- the decisions ---------------------------------------------------------------------
    def decide(self, e: TocEntry) -> str:
        """'keep', 'skip', 'data' (platform table rows), 'move' (after the data) or 'todo:<why>'."""
        kind, _, name = e.tag.partition(" ")
        if e.schema == "-" and not name and e.owner:
            # "COMMENT - EXTENSION pg_stat_statements " has no owner: toc.parse, which strips the
            # line, takes the name for the owner.
            name = e.owner
        if e.desc == "DEFAULT ACL":
            return self.default_acl(e)
        if e.desc == "SCHEMA":
            return "skip" if e.tag in self.provided else "keep"
        if e.desc in ("ACL", "COMMENT", "SECURITY LABEL") and e.schema == "-":
            return self.about_global(e, kind, _unquote(name))
        if e.desc == "EXTENSION":
            return self.extension(e)
        if e.desc == "EVENT TRIGGER":
            return self.event_trigger(e)
        if e.desc == "PUBLICATION":
            return self.publication(e)
        if e.desc in ("PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA"):
            return self.publication_member(e)
        if e.schema in self.provided:
            return self.platform_object(e)
        if (e.schema, e.tag) in self.t.pinned_functions:
            # Dropping it (--clean) fails while the platform's table depends on it: keep the live
            # one, with its grants and comment.
            if e.desc == "FUNCTION":
                self.plan.kept_live.append(f"function {e.schema}.{e.tag} (the "
                                           f"{self.t.pinned_functions[(e.schema, e.tag)]} depends on it)")
            return "skip"
        if e.desc == "TABLE":
            self.recreated_tables.add((e.schema, e.tag))
        return "keep"

    def default_acl(self, e: TocEntry) -> str:
        if e.schema in self.provided:
            return "skip"  # the platform's own default privileges in its schemas
        if e.owner == self.t.current_user or (e.owner not in self.reserved and self.t.may_act_as(e.owner)):
            return "keep"
        if e.owner in self.reserved:
            return "skip"  # the platform's (supabase_admin ...): a new project has them already
        return f"todo:default privileges of role {e.owner} need membership in it (GRANT {e.owner} TO {self.t.current_user})"

    def about_global(self, e: TocEntry, kind: str, name: str) -> str:
        if kind == "SCHEMA":
            return "skip" if name in self.provided else "keep"
        if kind == "EXTENSION":
            return "keep" if name in self.kept_extensions else "skip"
        if kind == "EVENT" and name.startswith("TRIGGER "):
            return "keep" if _unquote(name[len("TRIGGER "):]) in self.kept_event_triggers else "skip"
        return "keep"

    def extension(self, e: TocEntry) -> str:
        if e.tag in self.t.extensions:
            return "skip"
        if e.tag in self.t.installable:
            self.kept_extensions.add(e.tag)
            schema = self.extension_schemas.get(e.tag)
            if schema and schema not in self.t.schemas:
                self.plan.extension_schemas.add(schema)
            return "keep"
        return f"todo:extension {e.tag} is not installed there and needs a superuser (enable it in the dashboard)"

    def event_trigger(self, e: TocEntry) -> str:
        if e.tag in self.t.event_triggers:
            return "skip"
        if self.t.superuser:
            self.kept_event_triggers.add(e.tag)
            return "keep"
        if e.owner in self.reserved:
            return "skip"  # the platform's (PostgREST's schema reload hook): every project has its own
        return "todo:event triggers need a superuser"

    def publication(self, e: TocEntry) -> str:
        if e.tag in self.t.publications:
            return "skip"
        if self.t.superuser or e.owner not in self.reserved:
            self.our_publications.add(e.tag)
            return "keep"
        return "skip"  # the platform's publication (supabase_realtime): projects come with it

    def publication_member(self, e: TocEntry) -> str:
        pub, table = _split_known(e.tag, set(self.t.publications) | self.our_publications)
        if pub in self.our_publications:
            return "keep"
        exists = (pub, e.schema, table) in self.t.publication_tables
        if exists and (e.schema, table) not in self.recreated_tables:
            return "skip"
        owner = self.t.publications.get(pub, e.owner)
        return f"todo:publication {pub} belongs to {owner}, so adding {e.schema}.{table} to it needs that role"

    def platform_object(self, e: TocEntry) -> str:
        """Entries in a schema whose definitions the destination already has (auth, storage)."""
        if e.desc == "TABLE DATA":
            if self.mode == "in-place":
                self.plan.kept_live.append(f"rows of {e.schema}.{e.tag}")
                return "skip"
            if (e.schema, e.tag) not in self.t.relations:
                self.plan.missing.append(f"{e.schema}.{e.tag}")
                return "skip"
            return "data"
        if e.desc == "SEQUENCE SET":
            return "keep" if self.mode != "in-place" and (e.schema, e.tag) in self.t.sequences else "skip"
        table, name = _split_known(e.tag, self.t.tables_in(e.schema))
        owner = self.t.relations.get((e.schema, table), "")
        if e.desc == "TRIGGER":
            if (e.schema, table, name) in self.t.triggers:
                if self.mode == "in-place":
                    self.plan.kept_live.append(f"trigger {name} on {e.schema}.{table}")
                return "skip"
            return "move"  # the application's trigger: after the data, so it does not fire on it
        if e.desc == "POLICY":
            if (e.schema, table, name) in self.t.policies:
                return "skip"
            return "keep" if self.t.may_act_as(owner) else f"todo:policies on {e.schema}.{table} need its owner ({owner})"
        if e.desc == "ROW SECURITY":
            if (e.schema, e.tag) in self.t.rls:
                return "skip"
            return "keep" if self.t.may_act_as(owner) else f"todo:row level security on {e.schema}.{e.tag} needs its owner ({owner})"
        return "skip"  # tables, functions, indexes, grants ...: the platform provides them


def plan_restore(entries: Sequence[TocEntry], target: TargetState, *, mode: str, managed: Iterable[str],
                 reserved: frozenset[str], extension_schemas: dict[str, str] | None = None) -> Plan:
    """Decide every entry; platform tables' rows are loaded parents first and the application's
    triggers on platform tables come after all data."""
    planner = _Planner(target, mode=mode, managed=managed, reserved=reserved,
                       extension_schemas=extension_schemas or {})
    plan = planner.plan
    data_slots: list[int] = []
    for e in entries:
        decision = planner.decide(e)
        if decision in ("keep", "data"):
            if decision == "data":
                data_slots.append(len(plan.entries))
                plan.managed_data.append(e)
            plan.entries.append(e)
        elif decision == "move":
            plan.moved.append(e)
        elif decision.startswith("todo:"):
            plan.todo.append(Todo(e, decision[len("todo:"):]))
        else:
            plan.skipped += 1
    # The platform's foreign keys exist before the load (unlike the application's, which come
    # after the data) and pg_dump writes data in name order: auth.identities before auth.users.
    plan.managed_data = parents_first(plan.managed_data, target.foreign_keys)
    for slot, e in zip(data_slots, plan.managed_data, strict=True):
        plan.entries[slot] = e
    plan.entries.extend(plan.moved)
    return plan


def split_script(script: str) -> dict[tuple[str, str, str], str]:
    """pg_restore --file output, split into the SQL of each entry: (desc, schema, tag) -> SQL,
    without comments, blank lines and psql meta-commands."""
    out: dict[tuple[str, str, str], str] = {}
    key: tuple[str, str, str] | None = None
    body: list[str] = []
    for line in script.splitlines():
        if line.startswith("-- Name: ") and "; Type: " in line:
            if key is not None:
                out[key] = "\n".join(body).strip()
            head = line[len("-- Name: "):]
            tag, _, rest = head.partition("; Type: ")
            desc, _, rest = rest.partition("; Schema: ")
            schema, _, _owner = rest.partition("; Owner: ")
            key, body = (desc, schema, tag), []
        elif key is not None and line.strip() and not line.startswith("--") and not line.startswith("\\"):
            body.append(line)
    if key is not None:
        out[key] = "\n".join(body).strip()
    return out
