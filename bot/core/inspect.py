"""Facts about a database that a backup's manifest records and a restore is checked against:
tables and row counts, row level security and policies, sequences, roles, grants, default
privileges, triggers and extensions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

# Schemas that belong to PostgreSQL itself, never to the application.
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")

TABLES_SQL = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
       c.reltuples::bigint AS estimate, c.relrowsecurity AS rls, c.relforcerowsecurity AS force_rls,
       (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies,
       pg_total_relation_size(c.oid) AS bytes,
       pg_get_userbyid(c.relowner) AS owner,
       has_table_privilege(c.oid, 'SELECT') AS readable
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname <> ALL(%(system)s) AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast%%'
  AND n.nspname <> ALL(%(excluded)s)
ORDER BY 1, 2
"""

SEQUENCES_SQL = """
SELECT schemaname AS schema, sequencename AS name, last_value
FROM pg_sequences
WHERE schemaname <> ALL(%(system)s) AND schemaname <> ALL(%(excluded)s)
  AND has_sequence_privilege(format('%%I.%%I', schemaname, sequencename), 'SELECT')
ORDER BY 1, 2
"""

ROLES_SQL = """
SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1
"""

DB_SIZE_SQL = "SELECT current_database(), pg_database_size(current_database())"

# Who may do what on every relation and routine, as (kind, object, grantee, privileges): the
# explicit ACL, or the built-in default when there is none, so "no grants beyond the owner" and
# "owner only" compare equal. Grantors are left out: a restore as another role cannot keep them.
# Members of extensions belong to the extension, which a new project may install elsewhere.
GRANTS_SQL = """
SELECT x.kind, x.obj, CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END,
       string_agg(x.privilege_type || CASE WHEN x.is_grantable THEN '*' ELSE '' END, ','
                  ORDER BY x.privilege_type)
FROM (
  SELECT CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                        WHEN 'f' THEN 'foreign table' ELSE 'table' END AS kind,
         n.nspname || '.' || c.relname AS obj, a.grantee, a.privilege_type, a.is_grantable
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
       aclexplode(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
    AND n.nspname <> ALL(%(system)s) AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname <> ALL(%(excluded)s)
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')
  UNION ALL
  SELECT 'function', n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
         a.grantee, a.privilege_type, a.is_grantable
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
       aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
  WHERE n.nspname <> ALL(%(system)s) AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname <> ALL(%(excluded)s)
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                    AND d.deptype = 'e')
) x
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""

DEFAULT_ACL_SQL = """
SELECT pg_get_userbyid(d.defaclrole), coalesce(n.nspname, '-'),
       CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
                            WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas' ELSE d.defaclobjtype::text END,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       string_agg(a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END, ','
                  ORDER BY a.privilege_type)
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
WHERE n.nspname IS NULL OR n.nspname <> ALL(%(excluded)s)
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""

TRIGGERS_SQL = """
SELECT n.nspname || '.' || c.relname || ' ' || t.tgname
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND n.nspname <> ALL(%(system)s) AND n.nspname <> ALL(%(excluded)s)
ORDER BY 1
"""

EXTENSIONS_SQL = "SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1"


@dataclass(frozen=True)
class TableFacts:
    schema: str
    name: str
    rows: int | None  # exact count, or the planner's estimate when ``exact`` is False
    exact: bool
    rls: bool
    force_rls: bool
    policies: int
    bytes: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "name": self.name, "rows": self.rows, "exact": self.exact,
            "rls": self.rls, "force_rls": self.force_rls, "policies": self.policies, "bytes": self.bytes,
        }


def inspect_database(conn: psycopg.Connection[Any], *, exact_max_rows: int,
                     excluded_schemas: tuple[str, ...] = (),
                     excluded_tables: tuple[str, ...] = ()) -> dict[str, Any]:
    """Gather the manifest's facts on an open connection (inside the dump's snapshot)."""
    params = {"system": list(SYSTEM_SCHEMAS), "excluded": list(excluded_schemas)}
    tables: list[TableFacts] = []
    unreadable: list[str] = []
    for schema, name, _kind, estimate, rls, force_rls, policies, size, _owner, readable in conn.execute(
        TABLES_SQL, params
    ).fetchall():
        if f"{schema}.{name}" in excluded_tables:
            continue
        if not readable:
            unreadable.append(f"{schema}.{name}")
            tables.append(TableFacts(schema, name, None, False, rls, force_rls, policies, size))
            continue
        exact = estimate < 0 or estimate <= exact_max_rows
        if exact:
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            row = conn.execute(query).fetchone()
            rows = int(row[0]) if row else 0
        else:
            rows = int(estimate)
        tables.append(TableFacts(schema, name, rows, exact, rls, force_rls, policies, size))
    sequences = {
        f"{s}.{n}": (int(v) if v is not None else None)
        for s, n, v in conn.execute(SEQUENCES_SQL, params).fetchall()
    }
    roles = [r[0] for r in conn.execute(ROLES_SQL).fetchall()]
    grants: dict[str, dict[str, str]] = {}
    for kind, obj, grantee, privs in conn.execute(GRANTS_SQL, params).fetchall():
        grants.setdefault(f"{kind} {obj}", {})[grantee] = privs
    default_acl: dict[str, dict[str, str]] = {}
    for role, schema, objtype, grantee, privs in conn.execute(DEFAULT_ACL_SQL, params).fetchall():
        default_acl.setdefault(f"{role} {schema} {objtype}", {})[grantee] = privs
    triggers = [r[0] for r in conn.execute(TRIGGERS_SQL, params).fetchall()]
    extensions = {name: schema for name, schema in conn.execute(EXTENSIONS_SQL).fetchall()}
    dbname, dbsize = conn.execute(DB_SIZE_SQL).fetchone() or ("", 0)
    return {
        "database": dbname,
        "database_size_bytes": int(dbsize),
        "tables": [t.as_json() for t in tables],
        "rls_tables": {t.qualified: t.policies for t in tables if t.rls},
        "sequences": sequences,
        "roles": roles,
        "unreadable_tables": unreadable,
        "grants": grants,
        "default_acl": default_acl,
        "triggers": triggers,
        "extensions": extensions,
    }


def database_size(conninfo: str) -> int:
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        row = conn.execute(DB_SIZE_SQL).fetchone()
        return int(row[1]) if row else 0
