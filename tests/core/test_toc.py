"""The archive's table of contents is parsed into entries, owners and all."""

from __future__ import annotations

from bot.core import toc

LIST = """;
; Archive created at 2026-11-29 17:49:20 UTC
3424; 0 0 ACL crm TABLE accounts postgres
3407; 0 16402 TABLE DATA crm accounts postgres
3242; 2606 16412 CONSTRAINT crm accounts accounts_pkey postgres
3501; 0 0 COMMENT - EXTENSION pgcrypto {NO_OWNER}
216; 1259 16402 TABLE crm accounts postgres
""".replace("{NO_OWNER}", "")  # pg_restore ends an owner-less entry with a space


def test_entries_keep_their_descriptor_schema_tag_and_owner():
    entries = toc.parse(LIST)
    assert [(e.desc, e.schema, e.tag, e.owner) for e in entries] == [
        ("ACL", "crm", "TABLE accounts", "postgres"),
        ("TABLE DATA", "crm", "accounts", "postgres"),
        ("CONSTRAINT", "crm", "accounts accounts_pkey", "postgres"),
        ("COMMENT", "-", "EXTENSION pgcrypto", ""),
        ("TABLE", "crm", "accounts", "postgres"),
    ]


def test_one_table_keeps_what_the_table_needs_and_nothing_else():
    chosen = toc.one_table(toc.parse(LIST), "crm", "accounts")
    assert {e.dump_id for e in chosen} == {3424, 3407, 3242, 216}
