"""Restoring a Supabase backup `--to` a fresh project as `postgres` (no superuser): everything
the application had comes back identical, nothing fires twice, and what only the platform's
superuser may do is listed in the report with the exact SQL."""

from __future__ import annotations

import subprocess

import pytest
import zstandard

from bot.core.pgtools import find_bindir
from bot.core.restore import RestoreRequest, apply_roles
from bot.errors import BackupbotError
from tests.fixtures.supabase_cluster import APP_ROLES, RESERVED_ROLES, SupabaseProject
from tests.supabase.conftest import StoredBackup
from tests.supabase.facts import checksums, describe, note_sql, rows, run_as, scalar

PUBLICATION_STATEMENT = "ALTER PUBLICATION supabase_realtime ADD TABLE ONLY public.deals;"


def _restore_to(stored: StoredBackup, source: SupabaseProject, dest: SupabaseProject):
    services = stored.services(source.postgres_url)
    outcome, _ = services.restore(
        RestoreRequest(stored.backup.id, mode="to", to_url=dest.postgres_url, with_roles=True),
        actor="tester", source="cli")
    return outcome


def test_restore_to_fresh_project_as_postgres_reproduces_the_application(
    source_backup: StoredBackup, supabase_source: SupabaseProject, supabase_fresh: SupabaseProject,
) -> None:
    # GIVEN a backup of the source project and a new, empty project
    # WHEN it is restored --to the new project as postgres
    outcome = _restore_to(source_backup, supabase_source, supabase_fresh)
    src, dst = supabase_source, supabase_fresh

    # THEN every row of the application, auth and storage is identical ...
    assert checksums(dst.admin_url) == checksums(src.admin_url)
    # ... the sign-up trigger did not fire during the load (one profile per user, none twice) ...
    assert scalar(dst.postgres_url, "SELECT count(*), count(DISTINCT id) FROM public.profiles") == 3
    assert rows(dst.postgres_url, "SELECT count(*), count(DISTINCT id) FROM public.profiles") == [(3, 3)]
    # ... and grants per object and role, default privileges, triggers (on_auth_user_created on
    # auth.users included), RLS flags, sequences and the application's policies are identical.
    want, got = describe(src.postgres_url), describe(dst.postgres_url)
    for key in ("grants", "default_acl", "triggers", "rls", "sequences"):
        assert got[key] == want[key], key
    assert ("auth.users", "on_auth_user_created") in {(t[0], t[1]) for t in got["triggers"]}
    assert [p for p in got["policies"] if p[0] != "storage"] == [p for p in want["policies"] if p[0] != "storage"]
    # The deliberate revoke survived: no widening through the new project's default privileges.
    assert scalar(dst.postgres_url, "SELECT has_table_privilege('anon', 'public.audit_log', 'SELECT')") is False
    assert set(APP_ROLES) <= set(outcome.roles_created)

    # AND the report is green and says what needs the platform's superuser, as exact SQL
    assert outcome.report.ok, outcome.report.lines()
    assert "✓ table grants per role identical — 8 objects" in outcome.report.lines()
    assert any(note.endswith(PUBLICATION_STATEMENT) for note in outcome.report.notes), outcome.report.notes
    assert any("crm_reporter" in note and "PASSWORD" in note for note in outcome.report.notes)
    # Running the notes' statements as the superuser (the dashboard's SQL editor) completes it.
    for note in outcome.report.notes:
        if "SQL editor" in note:
            run_as(dst.admin_url, note_sql(note))
    assert describe(dst.postgres_url)["policies"] == want["policies"]
    pubs = "SELECT pubname, schemaname, tablename FROM pg_publication_tables ORDER BY 1, 2, 3"
    assert rows(dst.postgres_url, pubs) == rows(src.postgres_url, pubs)
    # A new sign-up fires the restored trigger.
    run_as(dst.admin_url, "INSERT INTO auth.users (id, email, raw_user_meta_data) VALUES "
                          "('44444444-4444-4444-8444-444444444444', 'new@example.com', '{\"full_name\": \"Nový\"}')")
    assert scalar(dst.postgres_url, "SELECT full_name FROM public.profiles WHERE id = '44444444-4444-4444-8444-444444444444'") == "Nový"


def test_restore_conflicting_with_the_target_exits_non_zero_naming_the_object_and_changes_nothing(
    source_backup: StoredBackup, supabase_source: SupabaseProject, supabase_fresh: SupabaseProject,
) -> None:
    # GIVEN a project that already has a user with the id of one in the backup
    run_as(supabase_fresh.admin_url, "INSERT INTO auth.users (id, email) VALUES "
                                     "('22222222-2222-4222-8222-222222222222', 'taken@example.com')")
    # ... and database-wide default privileges of its own, which the restore sets aside too
    run_as(supabase_fresh.postgres_url, "ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC")
    before = describe(supabase_fresh.postgres_url)
    assert ("postgres", "-", "f", "{postgres=X/postgres}") in before["default_acl"]
    # WHEN the backup is restored --to it
    with pytest.raises(BackupbotError) as err:
        _restore_to(source_backup, supabase_source, supabase_fresh)
    # THEN the error names the failing archive entry and says nothing was restored
    assert "TABLE DATA auth.users" in err.value.message
    assert "duplicate key" in err.value.message and "Nothing was restored" in err.value.message
    # AND the target is as it was: no application objects, its default privileges put back
    assert scalar(supabase_fresh.postgres_url,
                  "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0
    assert scalar(supabase_fresh.postgres_url, "SELECT count(*) FROM auth.users") == 1
    assert describe(supabase_fresh.postgres_url) == before


def test_pg_restore_cannot_reorder_data_from_a_stream_so_the_archive_is_copied_locally(
    source_backup: StoredBackup, tmp_path,
) -> None:
    # GIVEN the archive, and a list that loads auth.users before auth.identities (against the
    # archive's order, as the platform's foreign key requires)
    stored = source_backup.workdir / "backups" / source_backup.backup.object_key
    archive = tmp_path / "archive.dump"
    with stored.open("rb") as src, archive.open("wb") as dst:
        zstandard.ZstdDecompressor().copy_stream(src, dst)
    pg_restore = str(find_bindir() / "pg_restore")
    listing = subprocess.run([pg_restore, "--list", str(archive)], capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in listing.splitlines() if " TABLE DATA auth " in ln]
    users = next(ln for ln in lines if "TABLE DATA auth users" in ln)
    identities = next(ln for ln in lines if "TABLE DATA auth identities" in ln)
    assert lines.index(identities) < lines.index(users)  # pg_dump's order: by name
    reordered = tmp_path / "reordered.list"
    reordered.write_text(f"{users}\n{identities}\n")
    # WHEN pg_restore reads it from a pipe THEN it refuses; from a file it follows the list
    piped = subprocess.run([pg_restore, "-L", str(reordered), "-f", "-"], input=archive.read_bytes(),
                           capture_output=True)
    assert piped.returncode != 0 and b"out-of-order" in piped.stderr
    from_file = subprocess.run([pg_restore, "-L", str(reordered), "-f", "-", str(archive)],
                               capture_output=True, text=True, check=True).stdout
    assert from_file.index("COPY auth.users") < from_file.index("COPY auth.identities")


ROLES_DUMP = """\\restrict abc123
SET default_transaction_read_only = off;
CREATE ROLE anon;
ALTER ROLE anon WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
ALTER ROLE anon SET statement_timeout TO '1min';
CREATE ROLE crm_readonly;
ALTER ROLE crm_readonly WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE crm_reporter;
ALTER ROLE crm_reporter WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE crm_etl;
ALTER ROLE crm_etl WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION BYPASSRLS;
GRANT anon TO postgres GRANTED BY supabase_admin;
GRANT crm_readonly TO crm_reporter GRANTED BY supabase_admin;
GRANT crm_readonly TO authenticated GRANTED BY postgres;
\\unrestrict abc123
"""


def test_roles_dump_is_replayed_by_postgres_without_touching_reserved_roles(supabase_fresh: SupabaseProject) -> None:
    import psycopg

    with psycopg.connect(supabase_fresh.postgres_url, autocommit=True) as conn:
        applied = apply_roles(ROLES_DUMP, conn, frozenset(RESERVED_ROLES))
    assert applied.problems == []
    assert applied.created == ["crm_readonly", "crm_reporter", "crm_etl"]
    assert any("crm_etl has BYPASSRLS" in n and "ALTER ROLE crm_etl WITH BYPASSRLS;" in n for n in applied.notes)
    assert any(n.startswith("role crm_reporter can log in") for n in applied.notes)
    url = supabase_fresh.postgres_url
    assert scalar(url, "SELECT pg_has_role('crm_reporter', 'crm_readonly', 'MEMBER')") is True
    assert scalar(url, "SELECT pg_has_role('authenticated', 'crm_readonly', 'MEMBER')") is False
    assert scalar(url, "SELECT rolconfig FROM pg_roles WHERE rolname = 'anon'") == ["statement_timeout=3s"]
