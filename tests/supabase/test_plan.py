"""The Supabase restore plan, default-privilege statements and connection advice: pure functions,
table-driven, no database."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from bot.core.pgtools import ConnInfo, check_not_transaction_pooler, connection_advice, tool_error
from bot.core.profiles import SUPABASE_RESERVED_ROLES
from bot.core.supabase_acl import changes
from bot.core.supabase_target import TargetState
from bot.core.supabase_toc import parents_first, plan_restore, split_script
from bot.core.toc import TocEntry, parse
from bot.errors import ConnectionFailed

# Trimmed from `pg_restore --list` of the fixture's backup.
ARCHIVE = parse("""\
8; 2615 16486 SCHEMA - auth supabase_auth_admin
3612; 0 0 ACL - SCHEMA auth supabase_auth_admin
3613; 0 0 ACL - SCHEMA public pg_database_owner
4; 3079 16453 EXTENSION - pg_stat_statements
3615; 0 0 COMMENT - EXTENSION pg_stat_statements
2; 3079 16405 EXTENSION - uuid-ossp
3617; 0 0 COMMENT - EXTENSION "uuid-ossp"
301; 1255 16545 FUNCTION auth uid() supabase_auth_admin
323; 1255 16737 FUNCTION public handle_new_user() postgres
3622; 0 0 ACL public FUNCTION handle_new_user() postgres
230; 1259 16505 TABLE auth identities supabase_auth_admin
229; 1259 16494 TABLE auth users supabase_auth_admin
250; 1259 16694 TABLE public deals postgres
3591; 0 16505 TABLE DATA auth identities supabase_auth_admin
3590; 0 16494 TABLE DATA auth users supabase_auth_admin
3601; 0 16694 TABLE DATA public deals postgres
3595; 0 16553 TABLE DATA storage buckets supabase_storage_admin
3596; 0 16564 TABLE DATA storage objects supabase_storage_admin
3647; 0 0 SEQUENCE SET auth refresh_tokens_id_seq supabase_auth_admin
3427; 2620 16738 TRIGGER auth users on_auth_user_created supabase_auth_admin
3428; 2620 16740 TRIGGER public deals deals_audit postgres
3421; 2606 16516 FK CONSTRAINT auth identities identities_user_id_fkey supabase_auth_admin
3585; 3256 16742 POLICY storage objects Avatars are publicly readable supabase_storage_admin
3575; 0 16564 ROW SECURITY storage objects supabase_storage_admin
3587; 6104 16403 PUBLICATION - supabase_realtime supabase_admin
3588; 6106 16741 PUBLICATION TABLE public supabase_realtime deals supabase_admin
2198; 826 16402 DEFAULT ACL public DEFAULT PRIVILEGES FOR FUNCTIONS postgres
2193; 826 16399 DEFAULT ACL public DEFAULT PRIVILEGES FOR FUNCTIONS supabase_admin
2196; 826 16551 DEFAULT ACL storage DEFAULT PRIVILEGES FOR SEQUENCES supabase_storage_admin
2200; 826 16551 DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES crm_owner
3362; 3466 16485 EVENT TRIGGER - pgrst_ddl_watch supabase_admin
""")

# A fresh project, as `postgres` sees it.
FRESH = TargetState(
    current_user="postgres", superuser=False,
    member_of=frozenset({"postgres", "anon", "authenticated", "service_role"}),
    schemas={"public": "pg_database_owner", "auth": "supabase_auth_admin", "storage": "supabase_storage_admin",
             "extensions": "postgres"},
    relations={("auth", "identities"): "supabase_auth_admin", ("auth", "users"): "supabase_auth_admin",
               ("storage", "buckets"): "supabase_storage_admin", ("storage", "objects"): "supabase_storage_admin"},
    sequences=frozenset({("auth", "refresh_tokens_id_seq")}),
    rls=frozenset({("storage", "objects")}),
    foreign_keys=((("auth", "identities"), ("auth", "users")), (("storage", "objects"), ("storage", "buckets"))),
    publications={"supabase_realtime": "supabase_admin"},
    event_triggers=frozenset({"pgrst_ddl_watch"}),
    extensions=frozenset({"pg_stat_statements", "uuid-ossp", "pgcrypto"}),
    installable=frozenset({"uuid-ossp", "pgcrypto"}),
)
# The same project after the application was restored into it (what --in-place meets).
LIVE = replace(FRESH, triggers=frozenset({("auth", "users", "on_auth_user_created")}),
               publication_tables=frozenset({("supabase_realtime", "public", "deals")}),
               policies=frozenset({("storage", "objects", "Avatars are publicly readable")}),
               pinned_functions={("public", "handle_new_user()"): "trigger on_auth_user_created on auth.users",
                                 ("public", "FUNCTION handle_new_user()"): "trigger on_auth_user_created on auth.users"})
# A new database on the same server: no platform schemas (what --into meets).
EMPTY = replace(FRESH, schemas={"public": "pg_database_owner"}, relations={}, sequences=frozenset(), rls=frozenset(),
                foreign_keys=(), publications={}, event_triggers=frozenset(), extensions=frozenset({"plpgsql"}))


def _plan(target: TargetState, mode: str):
    return plan_restore(ARCHIVE, target, mode=mode, managed=("auth", "storage"), reserved=SUPABASE_RESERVED_ROLES,
                        extension_schemas={"uuid-ossp": "extensions", "pg_stat_statements": "extensions"})


def _tags(entries: list[TocEntry]) -> list[str]:
    return [f"{e.desc} {e.schema} {e.tag}" for e in entries]


@dataclass(frozen=True)
class Case:
    entry: str  # how the archive entry's line reads after its ids: "DESC schema tag [owner]"
    to: str  # the decision for --to a fresh project: run, skip or todo
    in_place: str
    into: str


CASES = [
    Case("SCHEMA - auth", "skip", "skip", "run"),
    Case("ACL - SCHEMA auth", "skip", "skip", "run"),
    Case("ACL - SCHEMA public", "run", "run", "run"),
    Case("EXTENSION - pg_stat_statements", "skip", "skip", "todo"),
    Case("COMMENT - EXTENSION pg_stat_statements", "skip", "skip", "skip"),
    Case("EXTENSION - uuid-ossp", "skip", "skip", "run"),
    Case('COMMENT - EXTENSION "uuid-ossp"', "skip", "skip", "run"),
    Case("FUNCTION auth uid()", "skip", "skip", "run"),
    Case("FUNCTION public handle_new_user()", "run", "skip", "run"),
    Case("ACL public FUNCTION handle_new_user()", "run", "skip", "run"),
    Case("TABLE auth users", "skip", "skip", "run"),
    Case("TABLE DATA auth users", "run", "skip", "run"),
    Case("SEQUENCE SET auth refresh_tokens_id_seq", "run", "skip", "run"),
    Case("TRIGGER auth users on_auth_user_created", "run", "skip", "run"),
    Case("FK CONSTRAINT auth identities identities_user_id_fkey", "skip", "skip", "run"),
    Case("POLICY storage objects Avatars are publicly readable", "todo", "skip", "run"),
    Case("ROW SECURITY storage objects", "skip", "skip", "run"),
    Case("PUBLICATION - supabase_realtime", "skip", "skip", "skip"),
    Case("PUBLICATION TABLE public supabase_realtime deals", "todo", "todo", "todo"),
    Case("DEFAULT ACL public DEFAULT PRIVILEGES FOR FUNCTIONS postgres", "run", "run", "run"),
    Case("DEFAULT ACL public DEFAULT PRIVILEGES FOR FUNCTIONS supabase_admin", "skip", "skip", "skip"),
    Case("DEFAULT ACL storage DEFAULT PRIVILEGES FOR SEQUENCES", "skip", "skip", "skip"),
    Case("DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES crm_owner", "todo", "todo", "todo"),
    Case("EVENT TRIGGER - pgrst_ddl_watch", "skip", "skip", "skip"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.entry)
@pytest.mark.parametrize(("mode", "target"), [("to", FRESH), ("in-place", LIVE), ("into", EMPTY)])
def test_each_archive_entry_is_run_skipped_or_left_to_a_superuser(case: Case, mode: str, target: TargetState) -> None:
    plan = _plan(target, mode)
    wanted = {"to": case.to, "in-place": case.in_place, "into": case.into}[mode]
    entry = next(e for e in ARCHIVE if (rest := e.line.split(" ", 3)[3]) == case.entry or rest.startswith(case.entry + " "))
    got = ("run" if entry in plan.entries else "todo" if entry in [t.entry for t in plan.todo] else "skip")
    assert got == wanted


def test_platform_rows_load_parents_first_and_app_triggers_on_platform_tables_come_last() -> None:
    plan = _plan(FRESH, "to")
    order = _tags(plan.entries)
    assert order.index("TABLE DATA auth users") < order.index("TABLE DATA auth identities")
    assert order.index("TABLE DATA storage buckets") < order.index("TABLE DATA storage objects")
    assert order[-1] == "TRIGGER auth users on_auth_user_created"
    # The application's own trigger stays in the post-data section where pg_dump put it.
    assert order.index("TRIGGER public deals deals_audit") < order.index("TRIGGER auth users on_auth_user_created")
    assert [t.entry.owner for t in plan.todo if t.entry.desc == "DEFAULT ACL"] == ["crm_owner"]


def test_missing_platform_table_is_reported_and_in_place_keeps_live_objects() -> None:
    older = replace(FRESH, relations={k: v for k, v in FRESH.relations.items() if k != ("storage", "buckets")})
    assert _plan(older, "to").missing == ["storage.buckets"]
    kept = _plan(LIVE, "in-place").kept_live
    assert "trigger on_auth_user_created on auth.users" in kept and "rows of auth.users" in kept
    assert any(k.startswith("function public.handle_new_user()") for k in kept)


def test_into_creates_the_schemas_installable_extensions_need() -> None:
    assert _plan(EMPTY, "into").extension_schemas == {"extensions"}


def test_parents_first_is_stable_and_survives_cycles() -> None:
    a, b, c = (TocEntry("", i, "TABLE DATA", "s", n, "o") for i, n in enumerate("abc"))
    fks = [(("s", "a"), ("s", "c")), (("s", "b"), ("s", "b"))]  # a needs c; b references itself
    assert [e.tag for e in parents_first([a, b, c], fks)] == ["b", "c", "a"]
    cycle = [(("s", "a"), ("s", "b")), (("s", "b"), ("s", "a"))]
    assert [e.tag for e in parents_first([a, b, c], cycle)] == ["c", "a", "b"]


def test_split_script_gives_each_entry_its_sql_without_comments_or_meta_commands() -> None:
    script = """\\restrict k
SET row_security = off;
--
-- Name: objects Avatars are publicly readable; Type: POLICY; Schema: storage; Owner: supabase_storage_admin
--

CREATE POLICY "Avatars are publicly readable" ON storage.objects FOR SELECT USING ((bucket_id = 'avatars'::text));


--
-- Name: supabase_realtime deals; Type: PUBLICATION TABLE; Schema: public; Owner: supabase_admin
--

ALTER PUBLICATION supabase_realtime ADD TABLE ONLY public.deals;

--
-- PostgreSQL database dump complete
--

\\unrestrict k
"""
    assert split_script(script) == {
        ("POLICY", "storage", "objects Avatars are publicly readable"):
            """CREATE POLICY "Avatars are publicly readable" ON storage.objects FOR SELECT USING ((bucket_id = 'avatars'::text));""",
        ("PUBLICATION TABLE", "public", "supabase_realtime deals"):
            "ALTER PUBLICATION supabase_realtime ADD TABLE ONLY public.deals;",
    }


@pytest.mark.parametrize(("have", "want", "expected"), [
    ({("anon", "SELECT", False)}, set(), ["REVOKE SELECT ON TABLES FROM anon"]),
    (set(), {("crm", "SELECT", False)}, ["GRANT SELECT ON TABLES TO crm"]),
    ({("crm", "SELECT", True)}, {("crm", "SELECT", False)}, ["REVOKE GRANT OPTION FOR SELECT ON TABLES FROM crm"]),
    ({("crm", "SELECT", False)}, {("crm", "SELECT", True)}, ["GRANT SELECT ON TABLES TO crm WITH GRANT OPTION"]),
    ({("PUBLIC", "EXECUTE", False)}, set(), ["REVOKE EXECUTE ON TABLES FROM PUBLIC"]),
])
def test_default_privilege_changes_are_the_minimal_statements(have, want, expected) -> None:
    stmts = changes("postgres", ("public", "r"), frozenset(have), frozenset(want))
    text = [s.as_string(None).replace('"', "") for s in stmts]
    prefix = "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public "
    assert text == [prefix + e for e in expected]


SUPABASE_DIRECT = "postgresql://postgres:pw@db.abcdefghijklmnop.supabase.co:5432/postgres"


@pytest.mark.parametrize("failure", [
    'connection to server at "db.abcdefghijklmnop.supabase.co" (2406:da18::1), port 5432 failed: Network is unreachable',
    'could not translate host name "db.abcdefghijklmnop.supabase.co" to address: No address associated with hostname',
    'connection to server at "db.abcdefghijklmnop.supabase.co" (2406:da18::1), port 5432 failed: Cannot assign requested address',
])
def test_direct_connection_failing_on_an_ipv4_only_host_points_to_the_session_pooler(failure: str) -> None:
    info = ConnInfo.parse(SUPABASE_DIRECT)
    advice = connection_advice(failure, info)
    assert advice.startswith(failure) and "session pooler" in advice and "IPv6" in advice
    err = tool_error("pg_dump", 1, f"pg_dump: error: {failure}\n", info)
    assert isinstance(err, ConnectionFailed) and "session pooler" in err.message and "pw@" not in err.message


def test_other_failures_get_no_pooler_advice() -> None:
    assert connection_advice("password authentication failed", ConnInfo.parse(SUPABASE_DIRECT)) == \
        "password authentication failed"
    local = ConnInfo.parse("postgresql://u:pw@localhost:5432/db")
    assert connection_advice("Network is unreachable", local) == "Network is unreachable"


def test_transaction_pooler_is_refused_naming_the_session_pooler() -> None:
    pooler = ConnInfo.parse("postgresql://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres")
    with pytest.raises(ConnectionFailed, match="transaction pooler .*session pooler"):
        check_not_transaction_pooler(pooler)
    check_not_transaction_pooler(ConnInfo.parse("postgresql://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres"))
