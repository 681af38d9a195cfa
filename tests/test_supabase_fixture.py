"""The Supabase-shaped cluster fixtures build what the backup/restore tests rely on."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.supabase_cluster import APP_ROLES, RESERVED_ROLES, SupabaseProject

MANAGED_SCHEMAS = (
    "auth",
    "extensions",
    "graphql",
    "graphql_public",
    "pgbouncer",
    "realtime",
    "storage",
    "supabase_functions",
    "vault",
)


def _scalar(url: str, query: str, params: tuple[object, ...] | None = None) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def test_source_postgres_role_is_not_superuser_and_cannot_read_vault(
    supabase_source: SupabaseProject,
) -> None:
    # GIVEN the project owner's role WHEN it reads vault THEN the platform refuses it
    assert (
        _scalar(
            supabase_source.postgres_url,
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
        )
        is False
    )
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match="permission denied for schema vault"
    ):
        _scalar(supabase_source.postgres_url, "SELECT count(*) FROM vault.secrets")
    assert _scalar(supabase_source.admin_url, "SELECT count(*) FROM vault.secrets") == 1


def test_source_sign_up_trigger_filled_profiles_from_auth_users(
    supabase_source: SupabaseProject,
) -> None:
    users = _scalar(supabase_source.postgres_url, "SELECT count(*) FROM auth.users")
    assert users == 3
    assert _scalar(supabase_source.postgres_url, "SELECT count(*) FROM public.profiles") == users
    assert (
        _scalar(
            supabase_source.postgres_url,
            "SELECT full_name FROM public.profiles WHERE id = '11111111-1111-4111-8111-111111111111'",
        )
        == "Zoë Ångström"
    )
    assert _scalar(supabase_source.postgres_url, "SELECT count(*) FROM storage.objects") == 3


def test_source_keeps_the_deliberate_revoke_and_the_publication(
    supabase_source: SupabaseProject,
) -> None:
    assert (
        _scalar(
            supabase_source.postgres_url,
            "SELECT has_table_privilege('anon', 'public.audit_log', 'SELECT')",
        )
        is False
    )
    assert (
        _scalar(
            supabase_source.postgres_url,
            "SELECT has_table_privilege('anon', 'public.deals', 'SELECT')",
        )
        is True
    )
    assert (
        _scalar(
            supabase_source.postgres_url,
            "SELECT string_agg(schemaname || '.' || tablename, ',') FROM pg_publication_tables"
            " WHERE pubname = 'supabase_realtime'",
        )
        == "public.deals"
    )
    assert _scalar(
        supabase_source.postgres_url,
        "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
        (list(APP_ROLES),),
    ) == len(APP_ROLES)


def test_fresh_project_has_platform_schemas_but_no_application(
    supabase_fresh: SupabaseProject,
) -> None:
    url = supabase_fresh.postgres_url
    schemas = _scalar(url, "SELECT array_agg(nspname::text ORDER BY nspname) FROM pg_namespace")
    assert isinstance(schemas, list)
    assert set(MANAGED_SCHEMAS) <= set(schemas)
    assert (
        _scalar(url, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")
        == 0
    )
    assert _scalar(url, "SELECT count(*) FROM auth.users") == 0
    roles = "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)"
    assert _scalar(url, roles, (list(APP_ROLES),)) == 0
    assert _scalar(url, roles, (list(RESERVED_ROLES),)) == len(RESERVED_ROLES)
    assert (
        _scalar(url, "SELECT count(*) FROM pg_publication WHERE pubname = 'supabase_realtime'") == 1
    )
