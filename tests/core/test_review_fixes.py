"""Regression tests for bugs found in review: drills that fail early, 'last good' in status,
and a roles dump that must not touch reserved or existing roles."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from bot.core.drill import run_drill
from bot.core.restore import apply_roles
from bot.core.status import gather_status
from bot.errors import RestoreError
from tests.fixtures.pg import query


def test_drill_that_fails_before_restoring_finishes_its_run_and_pins_nothing(crm_db, make_services, monkeypatch):
    # GIVEN a backup, and a server on which the scratch database cannot be prepared
    services = make_services(crm_db)
    services.backup(actor="t", source="cli")

    def refuse(*_a, **_k):
        raise RestoreError("cannot connect to the maintenance database")

    monkeypatch.setattr(services, "restore_destination", refuse)
    # WHEN the drill runs
    result = run_drill(services, "prod", actor="t", source="cli")
    # THEN it reports the failure, its run is finished, and retention is free to prune the backup
    assert not result.ok and "maintenance database" in (result.error or "")
    assert services.catalog.runs(kind="drill")[0]["status"] == "failed"
    assert services.catalog.in_use() == set()


def test_status_last_good_skips_a_backup_that_failed_verification(crm_db, make_services):
    services = make_services(crm_db)
    older = services.backup(actor="t", source="cli").backup
    newer = services.backup(actor="t", source="cli").backup
    services.catalog.set_verify(newer.id, False, "corrupt")
    report = gather_status(services, check_database=False)
    assert report.targets[0].last_good_id == older.id


def test_roles_dump_never_touches_reserved_or_existing_roles(pg):
    platform, existing, app_role = (f"r_{uuid.uuid4().hex[:8]}" for _ in range(3))
    pg.execute(f"CREATE ROLE {platform} NOLOGIN; CREATE ROLE {existing} NOLOGIN")
    dump = "\n".join([
        f"CREATE ROLE {app_role};",
        f"ALTER ROLE {app_role} WITH NOLOGIN;",
        f"COMMENT ON ROLE {platform} IS 'changed by restore';",
        f"COMMENT ON ROLE {existing} IS 'changed by restore';",
        f"GRANT {app_role} TO {platform};",
        f"ALTER ROLE {existing} WITH LOGIN;",
    ])
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        applied = apply_roles(dump, conn, frozenset({platform}))
    assert applied.created == [app_role]
    comments = query(pg.url(), "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname IN (%s, %s)",
                     (platform, existing))
    assert comments == [(None,), (None,)]
    assert query(pg.url(), "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (existing,)) == [(False,)]
    assert query(pg.url(), "SELECT pg_has_role(%s, %s, 'MEMBER')", (platform, app_role)) == [(False,)]
    assert any(f"GRANT {app_role} TO {platform};" in note for note in applied.notes)


@pytest.mark.parametrize("stmt", ["SECURITY LABEL FOR x ON ROLE new_role IS 'y';"])
def test_unknown_statement_forms_are_reported_not_run(pg, stmt):
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        applied = apply_roles(stmt, conn, frozenset())
    assert applied.problems == [] and any("not applied" in n for n in applied.notes)


def test_stale_temporary_archives_are_removed_at_start(tmp_path, monkeypatch):
    import os
    import tempfile
    import time

    from bot.services import remove_stale_temp_files

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old = tmp_path / "backupbot-abc.dump"
    fresh = tmp_path / "backupbot-def.dump"
    other = tmp_path / "someone-else.dump"
    for p in (old, fresh, other):
        p.write_bytes(b"PGDMP")
    past = time.time() - 7 * 3600
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert remove_stale_temp_files() == [old]
    assert fresh.exists() and other.exists() and not old.exists()
