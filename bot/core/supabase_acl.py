"""Default privileges of the restoring role, set aside for the length of a restore.

A Supabase project grants `anon`, `authenticated` and `service_role` everything `postgres`
creates in `public` (ALTER DEFAULT PRIVILEGES FOR ROLE postgres). pg_dump records grants only
relative to the built-in defaults, so tables re-created by pg_restore as `postgres` would come
back with grants the application had revoked (docs/supabase-notes.md, (d)). We therefore reset
the role's default privileges to the built-in ones before pg_restore creates anything; the
archive's own DEFAULT ACL entries, which pg_restore runs last, then put back exactly the
source's. If pg_restore fails, its transaction is rolled back and ``put_back`` restores what the
destination had, so a failed restore leaves no trace here either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

# (schema or "" for the database-wide row, object type) -> {(grantee or "PUBLIC", privilege, grantable)}
Key = tuple[str, str]
Item = tuple[str, str, bool]
Snapshot = dict[Key, frozenset[Item]]

DEFAULT_ACL_SQL = """
SELECT coalesce(n.nspname, ''), d.defaclobjtype::text,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type, a.is_grantable
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = %(role)s)
"""

# What a database-wide row means when it is absent: the built-in defaults (the owner, plus
# PUBLIC for functions and types). A schema-level row only ever adds to those, so its baseline is
# empty. acldefault() uses 's' for sequences where pg_default_acl uses 'S'.
BUILTIN_SQL = """
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type, a.is_grantable
FROM aclexplode(acldefault(%(objtype)s::"char", (SELECT oid FROM pg_roles WHERE rolname = %(role)s))) a
"""

OBJECT_TYPES = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS"}
PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER",
                        "EXECUTE", "USAGE", "CREATE"})
_ACLDEFAULT_TYPE = {"r": "r", "S": "s", "f": "f", "T": "T", "n": "n"}


@dataclass(frozen=True)
class SetAside:
    """What ``set_aside`` changed: the rows as they were, per role."""

    before: dict[str, Snapshot]
    scope: frozenset[str]


def snapshot(conn: psycopg.Connection[Any], role: str, scope: Iterable[str]) -> Snapshot:
    """The role's default privileges in the ``scope`` schemas ("" is the database-wide row)."""
    rows: dict[Key, set[Item]] = {}
    wanted = set(scope)
    for schema, objtype, grantee, privilege, grantable in conn.execute(DEFAULT_ACL_SQL, {"role": role}).fetchall():
        if schema not in wanted:
            continue
        rows.setdefault((schema, objtype), set()).add((grantee, privilege, bool(grantable)))
    return {k: frozenset(v) for k, v in rows.items()}


def _baseline(conn: psycopg.Connection[Any], role: str, key: Key) -> frozenset[Item]:
    schema, objtype = key
    if schema:
        return frozenset()
    rows = conn.execute(BUILTIN_SQL, {"objtype": _ACLDEFAULT_TYPE[objtype], "role": role}).fetchall()
    return frozenset((g, p, bool(gr)) for g, p, gr in rows)


def _statement(role: str, key: Key, action: str, privilege: str, grantee: str) -> sql.Composed:
    schema, objtype = key
    if privilege not in PRIVILEGES or objtype not in OBJECT_TYPES:
        raise ValueError(f"unexpected default privilege {privilege} on {objtype}")
    who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
    template = {
        "grant": "GRANT {priv} ON {objects} TO {who}",
        "grant+": "GRANT {priv} ON {objects} TO {who} WITH GRANT OPTION",
        "revoke": "REVOKE {priv} ON {objects} FROM {who}",
        "revoke-option": "REVOKE GRANT OPTION FOR {priv} ON {objects} FROM {who}",
    }[action]
    where = sql.SQL(" IN SCHEMA {}").format(sql.Identifier(schema)) if schema else sql.SQL("")
    return sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {role}{where} ").format(
        role=sql.Identifier(role), where=where) + sql.SQL(template).format(
        priv=sql.SQL(privilege), objects=sql.SQL(OBJECT_TYPES[objtype]), who=who)


def changes(role: str, key: Key, have: frozenset[Item], want: frozenset[Item]) -> list[sql.Composed]:
    """The statements that turn one default-privilege row from ``have`` into ``want``."""
    out: list[sql.Composed] = []
    for grantee, privilege, grantable in sorted(have - want):
        if (grantee, privilege, not grantable) in want:
            if grantable:  # keep the privilege, drop only the grant option
                out.append(_statement(role, key, "revoke-option", privilege, grantee))
            continue  # otherwise the GRANT ... WITH GRANT OPTION below adds the option
        out.append(_statement(role, key, "revoke", privilege, grantee))
    for grantee, privilege, grantable in sorted(want - have):
        if not grantable and (grantee, privilege, True) in have:
            continue  # handled by the REVOKE GRANT OPTION above
        out.append(_statement(role, key, "grant+" if grantable else "grant", privilege, grantee))
    return out


def _apply_target(conn: psycopg.Connection[Any], roles: Iterable[str], want: dict[str, Snapshot],
                  scope: frozenset[str], *, keys_from: dict[str, Snapshot]) -> list[sql.Composed]:
    """Statements bringing each role's rows to ``want`` (absent rows: the built-in baseline)."""
    statements: list[sql.Composed] = []
    for role in roles:
        have = snapshot(conn, role, scope)
        keys = set(have) | set(want.get(role, {})) | set(keys_from.get(role, {}))
        for key in sorted(keys):
            base = _baseline(conn, role, key)
            target = want.get(role, {}).get(key, base)
            statements += changes(role, key, have.get(key, base), target)
    return statements


def set_aside(conn: psycopg.Connection[Any], roles: Iterable[str], schemas: Iterable[str]) -> SetAside:
    """Reset the roles' default privileges in ``schemas`` (those the restore creates objects in)
    and their database-wide ones to the built-in defaults, in one transaction; return what they
    were. Other schemas' rows (the platform's, excluded ones) are not the archive's to restore."""
    roles = list(roles)
    scope = frozenset(schemas) | {""}
    before = {role: snapshot(conn, role, scope) for role in roles}
    with conn.transaction():
        for stmt in _apply_target(conn, roles, {}, scope, keys_from=before):
            conn.execute(stmt)
    return SetAside(before, scope)


def put_back(conn: psycopg.Connection[Any], aside: SetAside) -> list[str]:
    """Restore the rows ``set_aside`` changed, in one transaction; returns the statements run (so a
    failure can show a person what to run)."""
    statements = _apply_target(conn, list(aside.before), aside.before, aside.scope, keys_from=aside.before)
    with conn.transaction():
        for stmt in statements:
            conn.execute(stmt)
    return [s.as_string(conn) for s in statements]


def pending_statements(conn: psycopg.Connection[Any], aside: SetAside) -> list[str]:
    """What ``put_back`` would run, as text (for an error message when it cannot run)."""
    return [s.as_string(conn) for s in _apply_target(conn, list(aside.before), aside.before, aside.scope,
                                                      keys_from=aside.before)]
