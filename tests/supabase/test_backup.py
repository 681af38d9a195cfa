"""Backing up a Supabase project as `postgres`: the profile, the documented exclusions with their
reasons in the manifest, auth and storage data included, unreadable schemas named."""

from __future__ import annotations

import pytest

from bot.core import toc
from bot.errors import DumpError
from tests.fixtures.supabase_cluster import SupabaseProject
from tests.supabase.conftest import StoredBackup
from tests.supabase.facts import run_as

PLATFORM_SCHEMAS_IN_FIXTURE = {"vault", "realtime", "graphql", "graphql_public", "pgbouncer",
                               "supabase_functions", "extensions"}


def test_backup_as_postgres_records_the_supabase_profile_and_why_schemas_are_excluded(
    source_backup: StoredBackup,
) -> None:
    # GIVEN a backup of the Supabase-shaped source taken as postgres (BACKUP_PROFILE=auto)
    profile = source_backup.backup.manifest["profile"]
    # THEN the profile was detected and every excluded schema that exists is listed with a reason
    assert profile["name"] == "supabase" and profile["configured"] == "auto"
    assert set(profile["excluded_schemas"]) == PLATFORM_SCHEMAS_IN_FIXTURE
    assert all(len(why) > 20 for why in profile["excluded_schemas"].values())
    assert set(profile["excluded_tables"]) == {"auth.schema_migrations", "storage.migrations"}
    assert set(profile["managed_schemas"]) == {"auth", "storage"}
    assert source_backup.backup.profile == "supabase"


def test_backup_holds_auth_and_storage_rows_but_nothing_from_excluded_schemas(
    source_backup: StoredBackup, supabase_source: SupabaseProject,
) -> None:
    services = source_backup.services(supabase_source.postgres_url)
    [check] = services.verify(source_backup.backup.id, actor="tester", source="cli")
    entries = toc.parse(check.toc)
    data = {f"{e.schema}.{e.tag}" for e in entries if e.desc == "TABLE DATA"}
    assert {"auth.users", "auth.identities", "storage.buckets", "storage.objects"} <= data
    assert not {e.schema for e in entries} & {"vault", "realtime", "supabase_functions", "extensions"}
    assert "auth.schema_migrations" not in data and "storage.migrations" not in data
    tables = {f"{t['schema']}.{t['name']}": t["rows"] for t in source_backup.backup.manifest["tables"]}
    assert tables["auth.users"] == 3 and tables["storage.objects"] == 3 and tables["public.profiles"] == 3
    assert "auth.schema_migrations" not in tables
    # The source's grants are in the manifest: the audit log is closed to the API roles.
    audit = source_backup.backup.manifest["grants"]["table public.audit_log"]
    assert "anon" not in audit and "authenticated" not in audit and audit["crm_readonly"] == "SELECT"


def test_plain_profile_on_a_supabase_project_names_the_schema_postgres_cannot_read(
    source_backup: StoredBackup, supabase_source: SupabaseProject,
) -> None:
    services = source_backup.services(supabase_source.postgres_url, BACKUP_PROFILE="plain")
    with pytest.raises(DumpError, match="cannot read schema\\(s\\) pgbouncer, vault"):
        services.backup(actor="tester", source="cli")


def test_exclusion_list_is_configurable_and_recorded(source_backup: StoredBackup, supabase_source: SupabaseProject) -> None:
    services = source_backup.services(supabase_source.postgres_url,
                                      EXCLUDE_SCHEMAS="vault,realtime,extensions,graphql,graphql_public,pgbouncer")
    manifest = services.backup(actor="tester", source="cli").backup.manifest
    assert set(manifest["profile"]["excluded_schemas"]) == PLATFORM_SCHEMAS_IN_FIXTURE - {"supabase_functions"}
    assert manifest["profile"]["excluded_schemas"]["vault"].startswith("secrets encrypted")
    assert any(t["schema"] == "supabase_functions" for t in manifest["tables"])


def test_newer_platform_locking_migration_history_does_not_break_the_backup_but_an_app_schema_does(
    supabase_fresh: SupabaseProject, make_services,
) -> None:
    # GIVEN the newest images' state: postgres may not even read auth.schema_migrations
    run_as(supabase_fresh.admin_url, "REVOKE ALL ON auth.schema_migrations, storage.migrations FROM postgres")
    services = make_services(supabase_fresh.postgres_url)
    # WHEN backed up THEN the excluded history tables are never read
    backup = services.backup(actor="tester", source="cli").backup
    assert "auth.schema_migrations" in backup.manifest["profile"]["excluded_tables"]
    # GIVEN an application schema postgres cannot read WHEN backed up THEN the error names it
    run_as(supabase_fresh.admin_url, "CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int)")
    with pytest.raises(DumpError, match="cannot read schema\\(s\\) billing"):
        services.backup(actor="tester", source="cli")
    # AND a readable schema with a table postgres may not read is named too
    run_as(supabase_fresh.admin_url, "GRANT USAGE ON SCHEMA billing TO postgres")
    with pytest.raises(DumpError, match="cannot read table billing.invoices"):
        services.backup(actor="tester", source="cli")
