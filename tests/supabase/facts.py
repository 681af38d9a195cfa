"""SQL that describes a Supabase-shaped database for comparing a restore with its source:
grants per object and role, default privileges, policies, triggers, RLS flags, sequences and a
checksum of every row of the application's and the platform's tables."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

APP_AND_DATA_SCHEMAS = ("public", "auth", "storage")
# The platform's own migration history: each project has its own (excluded from backups).
PLATFORM_HISTORY = ("auth.schema_migrations", "storage.migrations")

# One row per object, grantee and privilege (docs/supabase-notes.md (d)), for relations and
# functions of public: the built-in ACL when there is none.
GRANTS = """
SELECT x.kind, x.obj, CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE x.grantee::regrole::text END,
       x.privilege_type, x.is_grantable
FROM (
  SELECT c.relkind::text AS kind, c.oid::regclass::text AS obj, a.*
  FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
  WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'm', 'p')
  UNION ALL
  SELECT 'function', p.oid::regprocedure::text, a.*
  FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
  WHERE p.pronamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'schema', n.nspname, a.*
  FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
  WHERE n.nspname = 'public'
) x
ORDER BY 1, 2, 3, 4
"""
DEFAULT_ACL = """
SELECT defaclrole::regrole::text, coalesce(defaclnamespace::regnamespace::text, '-'), defaclobjtype::text,
       defaclacl::text
FROM pg_default_acl ORDER BY 1, 2, 3
"""
POLICIES = """
SELECT schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check
FROM pg_policies ORDER BY 1, 2, 3
"""
TRIGGERS = """
SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled::text
FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2
"""
RLS = """
SELECT c.oid::regclass::text, c.relrowsecurity, c.relforcerowsecurity
FROM pg_class c WHERE c.relnamespace::regnamespace::text = ANY(%s) AND c.relkind IN ('r', 'p') ORDER BY 1
"""
SEQUENCES = "SELECT schemaname, sequencename, last_value FROM pg_sequences WHERE schemaname = ANY(%s) ORDER BY 1, 2"
PUBLICATION_TABLES = "SELECT pubname, schemaname, tablename FROM pg_publication_tables ORDER BY 1, 2, 3"
TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname = ANY(%s) ORDER BY 1, 2
"""


def rows(url: str, query: str | sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def scalar(url: str, query: str, params: Any = None) -> Any:
    return rows(url, query, params)[0][0]


def run_as(url: str, statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statements)  # type: ignore[arg-type]


def checksums(url: str, schemas: tuple[str, ...] = APP_AND_DATA_SCHEMAS) -> dict[str, tuple[int, str]]:
    """(row count, md5 of every row in a stable order) per table; ``url`` must be able to read
    them all (the platform superuser's, for storage.objects behind RLS)."""
    out: dict[str, tuple[int, str]] = {}
    for schema, name in rows(url, TABLES, [list(schemas)]):
        if f"{schema}.{name}" in PLATFORM_HISTORY:
            continue
        query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {}.{} t").format(
            sql.Identifier(schema), sql.Identifier(name))
        count, digest = rows(url, query)[0]
        out[f"{schema}.{name}"] = (int(count), str(digest))
    return out


def describe(url: str) -> dict[str, Any]:
    """Everything a restore must reproduce, as comparable lists."""
    return {
        "grants": rows(url, GRANTS),
        "default_acl": rows(url, DEFAULT_ACL),
        "policies": rows(url, POLICIES),
        "triggers": rows(url, TRIGGERS),
        "rls": rows(url, RLS, [list(APP_AND_DATA_SCHEMAS)]),
        "sequences": rows(url, SEQUENCES, [list(APP_AND_DATA_SCHEMAS)]),
    }


def note_sql(note: str) -> str:
    """The statement a report note asks a person to run."""
    return note.split("SQL editor): ", 1)[1]
