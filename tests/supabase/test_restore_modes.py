"""`--into` (a new database on a Supabase server) and `--in-place` (over the project itself) for a
Supabase backup, as `postgres`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.core.restore import RestoreRequest
from tests.fixtures.supabase_cluster import SupabaseProject, start_project
from tests.supabase.conftest import StoredBackup
from tests.supabase.facts import checksums, describe, rows, run_as, scalar


@pytest.fixture
def supabase_app() -> Iterator[SupabaseProject]:
    """A project with the CRM application that a test may change (unlike supabase_source)."""
    project = start_project(with_app=True)
    try:
        yield project
    finally:
        project.cluster.stop()


def test_restore_into_new_database_on_a_supabase_server_gives_a_complete_plain_copy(
    source_backup: StoredBackup, supabase_source: SupabaseProject, supabase_fresh: SupabaseProject,
) -> None:
    # GIVEN a Supabase server (the fresh project's) as the target's server
    services = source_backup.services(supabase_fresh.postgres_url)
    # WHEN the backup is restored --into a new database there, as postgres
    outcome, _ = services.restore(RestoreRequest(source_backup.backup.id, mode="into", into="scratch",
                                                 with_roles=True), actor="tester", source="cli")
    scratch = supabase_fresh.cluster.url("scratch", user="postgres", password=supabase_fresh.postgres_password)
    # THEN auth and storage exist there as plain schemas (owned by postgres) with every row ...
    assert checksums(scratch) == checksums(supabase_source.admin_url)
    assert rows(scratch, "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace "
                         "WHERE nspname IN ('auth', 'storage') ORDER BY 1") == [("auth", "postgres"), ("storage", "postgres")]
    # ... with the application's grants, policies (storage's too), triggers and sequences
    want, got = describe(supabase_source.postgres_url), describe(scratch)
    for key in ("grants", "policies", "triggers", "sequences"):
        assert got[key] == want[key], key
    assert [r for r in got["default_acl"] if r[0] == "postgres"] == [r for r in want["default_acl"] if r[0] == "postgres"]
    # AND the report is green; what a scratch database cannot have is listed, not failed
    assert outcome.report.ok, outcome.report.lines()
    skipped = next(c for c in outcome.report.checks if c.label == "not restored into this scratch database")
    assert "supabase_realtime" in skipped.detail and "pg_stat_statements" in skipped.detail
    assert not any("SQL editor" in n for n in outcome.report.notes)
    # The project's own database was not touched.
    assert scalar(supabase_fresh.postgres_url, "SELECT count(*) FROM auth.users") == 0


def test_in_place_restore_rolls_back_the_application_and_keeps_the_platform_rows(
    supabase_app: SupabaseProject, make_services,
) -> None:
    # GIVEN a project, its backup, then a bad day: deals deleted, a customer renamed
    url = supabase_app.postgres_url
    services = make_services(url)
    backup = services.backup(actor="tester", source="cli").backup
    app_before = checksums(supabase_app.admin_url, ("public",))
    grants_before = describe(url)
    run_as(url, "DELETE FROM public.deals; UPDATE public.customers SET name = 'oops'")
    # ... while the platform went on: a new storage bucket
    run_as(url, "INSERT INTO storage.buckets (id, name) VALUES ('invoices', 'invoices')")
    # WHEN the backup is restored in place (a safety backup first)
    outcome, safety = services.restore(RestoreRequest(backup.id, mode="in-place"), actor="tester", source="cli")
    # THEN the application's tables are as in the backup, its grants and triggers unchanged ...
    assert safety is not None and safety.profile == "supabase"
    assert checksums(supabase_app.admin_url, ("public",)) == app_before
    after = describe(url)
    for key in ("grants", "default_acl", "triggers", "rls", "policies"):
        assert after[key] == grants_before[key], key
    # ... the platform's live rows were kept (not rolled back) and the sign-up trigger still works
    assert scalar(url, "SELECT count(*) FROM storage.buckets") == 3
    run_as(supabase_app.admin_url, "INSERT INTO auth.users (id, email) VALUES "
                                   "('55555555-5555-4555-8555-555555555555', 'late@example.com')")
    assert scalar(url, "SELECT count(*) FROM public.profiles") == 4
    # AND the report says what was kept and what a person must redo (deals was re-created, so it
    # left the publication)
    assert outcome.report.ok, outcome.report.lines()
    kept = next(c for c in outcome.report.checks if c.label.startswith("kept as the destination has them"))
    assert "trigger on_auth_user_created on auth.users" in kept.detail
    assert "the live rows of auth.audit_log_entries" in kept.detail and "storage.buckets" in kept.detail
    assert any(n.endswith("ALTER PUBLICATION supabase_realtime ADD TABLE ONLY public.deals;") for n in outcome.report.notes)
