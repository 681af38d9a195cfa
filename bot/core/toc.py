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
          "SEQUENCE SET", "RULE", "STATISTICS"}
_RELATIONS = {"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"}
# What it may need to exist first, in a database that has nothing yet.
_SHARED = {"SCHEMA", "TYPE", "SHELL TYPE", "DOMAIN", "FUNCTION", "PROCEDURE", "COLLATION", "EXTENSION"}


def one_table_by_deps(entries: list[TocEntry], slots: Iterable[archive.TocSlot], schema: str, table: str,
                      *, with_shared: bool = True) -> list[TocEntry]:
    """One table by the archive's own dependency lists (exact names, no guessing by name): the
    table, what depends on it alone (data, defaults, its sequences, constraints, indexes,
    triggers, policies, RLS, grants, comments) and, ``with_shared``, what those need that a new
    database lacks (schema, types, domains, functions, extensions) plus, as before, the types,
    domains and functions of its schema. Over an existing database (``with_shared`` False)
    only the table's own objects: the shared ones are there, and --clean would drop them.

    Its foreign keys: over an existing database all of them (the tables they reference are
    there; dropping the table dropped them); into a new one those whose referenced tables come
    along (a self-reference), since the others would have nothing to point at."""
    by_id = {s.dump_id: s for s in slots}
    roots = [s.dump_id for s in by_id.values() if s.desc == "TABLE" and s.namespace == schema and s.tag == table]
    if not roots:
        return []
    dependents: dict[int, list[archive.TocSlot]] = {}
    for s in by_id.values():
        for d in set(s.deps):
            dependents.setdefault(d, []).append(s)
    keep = set(roots)

    def relations_ok(s: archive.TocSlot) -> bool:  # e.g. a policy whose subquery reads another table
        return not with_shared or all(d in keep for d in s.deps if d in by_id and by_id[d].desc in _RELATIONS)

    def fk_ok(s: archive.TocSlot) -> bool:
        tables = {d for d in s.deps if d in by_id and by_id[d].desc in _RELATIONS}
        referenced = {t for d in s.deps if d in by_id and by_id[d].desc in ("CONSTRAINT", "INDEX")
                      for t in by_id[d].deps if t in by_id and by_id[t].desc in _RELATIONS}
        own = (tables - referenced) or tables  # a self-reference: the same table both ways
        return own <= keep and (referenced <= keep or not with_shared)

    frontier = list(roots)
    while frontier:
        for s in dependents.get(frontier.pop(), []):
            if s.dump_id in keep:
                continue
            if not (fk_ok(s) if s.desc == "FK CONSTRAINT" else s.desc in _OWNED and relations_ok(s)):
                continue
            keep.add(s.dump_id)
            frontier.append(s.dump_id)
            if s.desc == "DEFAULT":  # a default's sequence (nextval) comes along, with its SET and grants
                for d in s.deps:
                    if d in by_id and by_id[d].desc == "SEQUENCE" and d not in keep:
                        keep.add(d)
                        frontier.append(d)
    if with_shared:
        needs = [d for k in keep for d in by_id[k].deps]
        while needs:
            d = needs.pop()
            if d in by_id and d not in keep and by_id[d].desc in _SHARED:
                keep.add(d)
                needs.extend(by_id[d].deps)
    # with_shared, as one_table: the schema's types and functions, which the table's functions
    # may use without a recorded dependency
    return [e for e in entries if e.dump_id in keep
            or (with_shared and e.schema == schema and e.desc in ("TYPE", "DOMAIN", "FUNCTION"))]


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
