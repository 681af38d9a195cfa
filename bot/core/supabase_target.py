"""What a restore destination already has, read as the restoring role: the platform's schemas,
tables, triggers, policies, foreign keys, publications and extensions, and what that role may do.
The Supabase restore plan (supabase_toc) decides every archive entry against these facts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

WHO_SQL = """
SELECT current_user, r.rolsuper,
       ARRAY(SELECT rolname FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER'))
FROM pg_roles r WHERE r.rolname = current_user
"""

SCHEMAS_SQL = "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace"

# Relations of the given (platform) schemas, with their owner and row level security flag.
RELATIONS_SQL = """
SELECT n.nspname, c.relname, c.relkind::text, pg_get_userbyid(c.relowner), c.relrowsecurity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
"""

TRIGGERS_SQL = """
SELECT n.nspname, c.relname, t.tgname
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND n.nspname = ANY(%(schemas)s)
"""

POLICIES_SQL = """
SELECT n.nspname, c.relname, p.polname
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s)
"""

# Foreign keys between the platform's tables: they exist before the data is loaded, so the data
# must go in parents first.
FOREIGN_KEYS_SQL = """
SELECT cn.nspname, c.relname, pn.nspname, p.relname
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE k.contype = 'f' AND cn.nspname = ANY(%(schemas)s) AND pn.nspname = ANY(%(schemas)s)
"""

PUBLICATIONS_SQL = "SELECT pubname, pg_get_userbyid(pubowner) FROM pg_publication"
PUBLICATION_TABLES_SQL = "SELECT pubname, schemaname, tablename FROM pg_publication_tables"
EVENT_TRIGGERS_SQL = "SELECT evtname FROM pg_event_trigger"
EXTENSIONS_SQL = "SELECT extname FROM pg_extension"
# Extensions this role could create: trusted ones (PG 13+) need no superuser.
INSTALLABLE_SQL = """
SELECT DISTINCT name FROM pg_available_extension_versions
WHERE %(superuser)s OR NOT superuser OR trusted
"""

# Application functions that the platform's tables depend on (a trigger the application put on
# auth.users, a storage policy calling a helper): a restore over the project cannot drop and
# re-create them, because only the owner of auth.users may drop the trigger. Both signature
# forms pg_dump uses in its tags: "f(text)" for the function, "f(name text)" for its ACL/COMMENT.
PINNED_FUNCTIONS_SQL = """
SELECT pn.nspname, p.proname || '(' || oidvectortypes(p.proargtypes) || ')',
       p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', dep.what
FROM (
  SELECT t.tgfoid AS fn, format('trigger %%s on %%s.%%s', t.tgname, n.nspname, c.relname) AS what
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE NOT t.tgisinternal AND n.nspname = ANY(%(schemas)s)
  UNION
  SELECT d.refobjid, format('policy %%s on %%s.%%s', pol.polname, n.nspname, c.relname)
  FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_depend d ON d.classid = 'pg_policy'::regclass AND d.objid = pol.oid
                  AND d.refclassid = 'pg_proc'::regclass
  WHERE n.nspname = ANY(%(schemas)s)
) dep
JOIN pg_proc p ON p.oid = dep.fn JOIN pg_namespace pn ON pn.oid = p.pronamespace
WHERE pn.nspname <> ALL(%(schemas)s)
"""

Name = tuple[str, str]  # (schema, name)


@dataclass(frozen=True)
class TargetState:
    current_user: str
    superuser: bool
    member_of: frozenset[str]  # roles the current user is a member of, itself included
    schemas: dict[str, str]  # schema -> owner
    relations: dict[Name, str] = field(default_factory=dict)  # platform relations -> owner
    sequences: frozenset[Name] = frozenset()
    rls: frozenset[Name] = frozenset()
    triggers: frozenset[tuple[str, str, str]] = frozenset()  # (schema, table, trigger)
    policies: frozenset[tuple[str, str, str]] = frozenset()  # (schema, table, policy)
    foreign_keys: tuple[tuple[Name, Name], ...] = ()  # (child, parent)
    publications: dict[str, str] = field(default_factory=dict)  # name -> owner
    publication_tables: frozenset[tuple[str, str, str]] = frozenset()  # (publication, schema, table)
    event_triggers: frozenset[str] = frozenset()
    extensions: frozenset[str] = frozenset()
    installable: frozenset[str] = frozenset()
    pinned_functions: dict[tuple[str, str], str] = field(default_factory=dict)  # (schema, tag) -> why

    def may_act_as(self, role: str) -> bool:
        """True when the current user may do what ``role`` may (own its objects, set its defaults)."""
        return self.superuser or role in self.member_of

    def tables_in(self, schema: str) -> list[str]:
        return [n for (s, n) in self.relations if s == schema]


def read_target(conn: psycopg.Connection[Any], platform_schemas: Iterable[str]) -> TargetState:
    """The destination's facts for a restore by the connected role; ``platform_schemas`` are the
    schemas whose objects the platform provides (their tables, triggers, policies are read)."""
    row = conn.execute(WHO_SQL).fetchone()
    if row is None:
        raise psycopg.ProgrammingError("the connected role is not in pg_roles")
    user, superuser, member_of = str(row[0]), bool(row[1]), frozenset(row[2] or ())
    schemas = {s: o for s, o in conn.execute(SCHEMAS_SQL).fetchall()}
    params = {"schemas": [s for s in platform_schemas if s in schemas], "superuser": superuser}
    relations: dict[Name, str] = {}
    sequences: set[Name] = set()
    rls: set[Name] = set()
    for schema, name, kind, owner, row_security in conn.execute(RELATIONS_SQL, params).fetchall():
        if kind == "S":
            sequences.add((schema, name))
        else:
            relations[(schema, name)] = owner
        if row_security:
            rls.add((schema, name))
    pinned: dict[tuple[str, str], str] = {}
    for schema, by_types, by_args, what in conn.execute(PINNED_FUNCTIONS_SQL, params).fetchall():
        pinned[(schema, by_types)] = what
        pinned[(schema, f"FUNCTION {by_args}")] = what
    return TargetState(
        current_user=user,
        superuser=superuser,
        member_of=member_of | {user},
        schemas=schemas,
        relations=relations,
        sequences=frozenset(sequences),
        rls=frozenset(rls),
        triggers=frozenset(tuple(r) for r in conn.execute(TRIGGERS_SQL, params).fetchall()),  # type: ignore[misc]
        policies=frozenset(tuple(r) for r in conn.execute(POLICIES_SQL, params).fetchall()),  # type: ignore[misc]
        foreign_keys=tuple(((c_s, c_n), (p_s, p_n)) for c_s, c_n, p_s, p_n
                           in conn.execute(FOREIGN_KEYS_SQL, params).fetchall()),
        publications={p: o for p, o in conn.execute(PUBLICATIONS_SQL).fetchall()},
        publication_tables=frozenset(tuple(r) for r in conn.execute(PUBLICATION_TABLES_SQL).fetchall()),  # type: ignore[misc]
        event_triggers=frozenset(r[0] for r in conn.execute(EVENT_TRIGGERS_SQL).fetchall()),
        extensions=frozenset(r[0] for r in conn.execute(EXTENSIONS_SQL).fetchall()),
        installable=frozenset(r[0] for r in conn.execute(INSTALLABLE_SQL, params).fetchall()),
        pinned_functions=pinned,
    )
