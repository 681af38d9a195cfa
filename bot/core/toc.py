"""An archive's table of contents (`pg_restore --list`) parsed into entries, and the `-L` lists
that restore a chosen subset: one table with what it needs, or everything but a set of kinds."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


def one_table(entries: list[TocEntry], schema: str, table: str) -> list[TocEntry]:
    """The table, its data, defaults, sequences, constraints, triggers, policies, RLS and grants,
    plus the schema and the types and domains of that schema it may depend on."""
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
