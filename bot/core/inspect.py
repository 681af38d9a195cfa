"""Facts about a database that a backup's manifest records and a restore is checked against:
tables and row counts, row level security and policies, sequences, roles."""

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
                     excluded_schemas: tuple[str, ...] = ()) -> dict[str, Any]:
    """Gather the manifest's facts on an open connection (inside the dump's snapshot)."""
    params = {"system": list(SYSTEM_SCHEMAS), "excluded": list(excluded_schemas)}
    tables: list[TableFacts] = []
    unreadable: list[str] = []
    for schema, name, _kind, estimate, rls, force_rls, policies, size, _owner, readable in conn.execute(
        TABLES_SQL, params
    ).fetchall():
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
    dbname, dbsize = conn.execute(DB_SIZE_SQL).fetchone() or ("", 0)
    return {
        "database": dbname,
        "database_size_bytes": int(dbsize),
        "tables": [t.as_json() for t in tables],
        "rls_tables": {t.qualified: t.policies for t in tables if t.rls},
        "sequences": sequences,
        "roles": roles,
        "unreadable_tables": unreadable,
    }


def database_size(conninfo: str) -> int:
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        row = conn.execute(DB_SIZE_SQL).fetchone()
        return int(row[1]) if row else 0
