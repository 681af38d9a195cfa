"""An archive's table of contents (`pg_restore --list`) parsed into entries, and the `-L` lists
that restore a chosen subset: one table with what it needs, or everything but a set of kinds."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot.core import archive

# Multi-word descriptors first so that "TABLE DATA" is not read as "TABLE".
_DESCS = sorted([
    "TABLE DATA", "SEQUENCE SET", "SEQUENCE OWNED BY", "FK CONSTRAINT", "ROW SECURITY", "DEFAULT ACL",
    "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA",
    "PUBLICATION", "SUBSCRIPTION", "EVENT TRIGGER", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY",
    "FOREIGN TABLE", "LARGE OBJECT", "BLOB", "BLOBS", "CHECK CONSTRAINT", "INDEX ATTACH", "TABLE ATTACH",
    "SCHEMA", "EXTENSION", "TYPE", "DOMAIN", "FUNCTION", "PROCEDURE", "AGGREGATE", "TABLE", "VIEW",
    "SEQUENCE", "DEFAULT", "CONSTRAINT", "INDEX", "TRIGGER", "RULE", "POLICY", "ACL", "COMMENT",
    "CAST", "COLLATION", "CONVERSION", "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "STATISTICS",
    "SERVER", "USER MAPPING", "FOREIGN DATA WRAPPER", "ENCODING", "STDSTRINGS", "SEARCHPATH",
    "DATABASE", "DATABASE PROPERTIES", "SHELL TYPE", "TRANSFORM", "ACCESS METHOD",
], key=len, reverse=True)
_HEAD = re.compile(r"^(\d+);\s+(\d+)\s+(\d+)\s+(.*)$")


@dataclass(frozen=True)
class TocEntry:
    line: str
    dump_id: int
    desc: str
    schema: str  # "-" when the object has no schema
    tag: str  # the rest: name, or "table name" for constraints/triggers/policies, "TABLE name" for ACL
    owner: str

    @property
    def words(self) -> list[str]:
        return self.tag.split()


def parse(toc_text: str) -> list[TocEntry]:
    entries: list[TocEntry] = []
    for line in toc_text.splitlines():
        # Only the line break goes: an entry without an owner ends in a space ("COMMENT - EXTENSION x "),
        # and stripping it would read the object's name as its owner.
        m = _HEAD.match(line.rstrip("\r\n"))
        if not m:
            continue
        rest = m.group(4)
        desc = next((d for d in _DESCS if rest == d or rest.startswith(d + " ")), rest.split(" ", 1)[0])
        remainder = rest[len(desc):].lstrip()  # keep a trailing space: it means "no owner"
        schema, _, tail = remainder.partition(" ")
        tag, _, owner = tail.rpartition(" ")
        if not tag:  # entries without an owner (e.g. "- " owner omitted)
            tag, owner = tail, ""
        entries.append(TocEntry(line.rstrip("\r\n"), int(m.group(1)), desc, schema, tag, owner))
    return entries


def list_file(entries: Iterable[TocEntry]) -> str:
    return "\n".join(e.line for e in entries) + "\n"


# What belongs to one table: entries that depend on it (or on its sequences), and on nothing
# else that is a relation. Its FK constraints are decided apart (see one_table_by_deps).
_OWNED = {"TABLE DATA", "DEFAULT", "CONSTRAINT", "CHECK CONSTRAINT", "INDEX", "TRIGGER", "POLICY",
          "ROW SECURITY", "ACL", "COMMENT", "SECURITY LABEL", "SEQUENCE", "SEQUENCE OWNED BY",
          "SEQUENCE SET", "RULE", "STATISTICS", "TABLE ATTACH", "INDEX ATTACH"}
_RELATIONS = {"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"}
# What it may need to exist first, in a database that has nothing yet.
_SHARED = {"SCHEMA", "TYPE", "SHELL TYPE", "DOMAIN", "FUNCTION", "PROCEDURE", "COLLATION", "EXTENSION"}
_ABOUT = {"ACL", "COMMENT", "SECURITY LABEL"}  # grants and comments follow what they are about


class Unsupported(ValueError):
    """A one-table restore that would do harm (drop or detach partitions): refused, untouched."""


def one_table_by_deps(entries: list[TocEntry], slots: Iterable[archive.TocSlot], schema: str, table: str,
                      *, with_shared: bool = True) -> list[TocEntry]:
    """One table by the archive's own dependency lists (exact names, no guessing by name): the
    table, what depends on it alone (data, defaults, its sequences, constraints, indexes,
    triggers, policies, RLS, grants, comments).

    ``with_shared`` (into a new database): also what those need that the database lacks
    (schema, types, domains, functions, extensions, with their grants), the types, domains and
    functions of its schema, its partitions or inheritance children with their data, and the
    foreign keys whose referenced tables come along (a self-reference).

    Over an existing database (``with_shared`` False): only the table's own objects, its own
    foreign keys and policies included whatever else they mention (those tables are there); the
    shared objects are there too, and --clean would drop them. A table with partitions or
    inheritance children, or one that is a partition or child itself, is refused: dropping it
    would take the others along or detach it."""
    by_id = {s.dump_id: s for s in slots}
    roots = [s.dump_id for s in by_id.values() if s.desc == "TABLE" and s.namespace == schema and s.tag == table]
    if not roots:
        return []
    dependents: dict[int, list[archive.TocSlot]] = {}
    for s in by_id.values():
        for d in set(s.deps):
            dependents.setdefault(d, []).append(s)

    def relations(s: archive.TocSlot) -> set[int]:
        return {d for d in s.deps if d in by_id and by_id[d].desc in _RELATIONS}

    if not with_shared:
        root = by_id[roots[0]]
        kin = [s for s in dependents.get(root.dump_id, []) if s.desc in ("TABLE", "TABLE ATTACH")]
        if kin or relations(root):
            raise Unsupported(f"{schema}.{table} is partitioned, inherited from, or a partition or child of another "
                              "table: restoring it alone over the database would drop or detach the others. "
                              "Restore it --into a new database, or restore the whole database")
    keep = set(roots)

    def relations_ok(s: archive.TocSlot) -> bool:
        if relations(s) <= keep:
            return True
        # over the database: the table's own policy, trigger or rule that also reads another table
        return not with_shared and s.desc in ("POLICY", "TRIGGER", "RULE") and s.tag.startswith(table + " ")

    def fk_ok(s: archive.TocSlot) -> bool:
        tables = relations(s)
        referenced = {t for d in s.deps if d in by_id and by_id[d].desc in ("CONSTRAINT", "INDEX")
                      for t in by_id[d].deps if t in by_id and by_id[t].desc in _RELATIONS}
        own = (tables - referenced) or tables  # a self-reference: the same table both ways
        return own <= keep and (referenced <= keep or not with_shared)

    def admit(s: archive.TocSlot) -> bool:
        if s.desc == "FK CONSTRAINT":
            return fk_ok(s)
        if s.desc == "TABLE":  # a partition or inheritance child: into a new database, with its data
            return with_shared and relations(s) <= keep
        return s.desc in _OWNED and relations_ok(s)

    frontier = list(roots)

    def take_sequences(s: archive.TocSlot) -> None:  # with their SET and grants, through the frontier
        for d in s.deps:
            if d in by_id and by_id[d].desc == "SEQUENCE" and d not in keep:
                keep.add(d)
                frontier.append(d)

    if with_shared:  # a sequence its CREATE TABLE itself uses (an inline default), e.g. one shared by two tables
        take_sequences(by_id[roots[0]])
        # the tables it inherits from or is a partition of: their definitions only (no data), or its
        # CREATE TABLE ... INHERITS / ATTACH PARTITION has nothing to name
        parents = [d for d in by_id[roots[0]].deps if d in by_id and by_id[d].desc == "TABLE"]
        while parents:
            d = parents.pop()
            if d not in keep:
                keep.add(d)
                parents.extend(p for p in by_id[d].deps if p in by_id and by_id[p].desc == "TABLE")
    while frontier:
        for s in dependents.get(frontier.pop(), []):
            if s.dump_id in keep or not admit(s):
                continue
            keep.add(s.dump_id)
            frontier.append(s.dump_id)
            if s.desc == "DEFAULT":  # a default's sequence (nextval) comes along
                take_sequences(s)
    if with_shared:
        # the schema's types and functions, which its functions may use without a recorded dependency
        extras = [s.dump_id for s in by_id.values() if s.namespace == schema and s.desc in ("TYPE", "DOMAIN", "FUNCTION")]
        needs = [d for k in keep for d in by_id[k].deps] + extras
        shared: set[int] = set()
        while needs:
            d = needs.pop()
            if d in by_id and d not in keep and by_id[d].desc in _SHARED:
                keep.add(d)
                shared.add(d)
                needs.extend(by_id[d].deps)
        for d in shared:  # their grants and comments, or a function comes back executable by anyone
            keep.update(s.dump_id for s in dependents.get(d, []) if s.desc in _ABOUT and relations(s) <= keep)
    return [e for e in entries if e.dump_id in keep]


def one_table(entries: list[TocEntry], schema: str, table: str) -> list[TocEntry]:
    """The table, its data, defaults, sequences, constraints, triggers, policies, RLS and grants,
    plus the schema and the types and domains of that schema it may depend on. By names alone,
    for when the archive's own TOC cannot be read (``one_table_by_deps`` is exact)."""
    # The TOC does not say which table owns a sequence; serial/identity sequences are named
    # <table>_<column>_seq, which is what we go by.
    sequences = {e.words[0] for e in entries if e.desc == "SEQUENCE" and e.schema == schema
                 and e.words and e.words[0].startswith(f"{table}_")}
    keep: list[TocEntry] = []
    for e in entries:
        w = e.words
        if e.desc == "SCHEMA" and e.tag.split(" ")[0] == schema:
            keep.append(e)
        elif e.schema != schema:
            continue
        elif e.desc in ("TYPE", "DOMAIN", "FUNCTION"):  # what its columns, defaults and triggers use
            keep.append(e)
        elif e.desc in ("TABLE", "TABLE DATA", "ROW SECURITY") and w[:1] == [table]:
            keep.append(e)
        elif e.desc in ("DEFAULT", "CONSTRAINT", "CHECK CONSTRAINT", "TRIGGER", "POLICY") and w[:1] == [table]:
            keep.append(e)
        elif e.desc in ("SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET") and w[:1] and w[0] in sequences:
            keep.append(e)
        elif e.desc == "ACL" and len(w) == 2 and (w == ["TABLE", table] or (w[0] == "SEQUENCE" and w[1] in sequences)):
            keep.append(e)
        elif e.desc == "INDEX" and table in e.tag:
            keep.append(e)
    return keep


def without(entries: list[TocEntry], drop: Callable[[TocEntry], bool]) -> list[TocEntry]:
    return [e for e in entries if not drop(e)]
