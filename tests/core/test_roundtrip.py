"""Backup → restore round trips on real PostgreSQL: contents, sequences, RLS and policies survive."""

from __future__ import annotations

import json
from pathlib import Path

import pyrage
import pytest

from bot.core.restore import RestoreRequest
from tests.fixtures.pg import query, table_checksums

POLICIES = "SELECT schemaname, tablename, policyname, roles::text, cmd, qual FROM pg_policies ORDER BY 1, 2, 3"
RLS = "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relnamespace = 'crm'::regnamespace AND relkind = 'r' ORDER BY 1"
SEQS = "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2"
OBJECTS = """SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal
             UNION ALL SELECT 'view', viewname FROM pg_views WHERE schemaname = 'crm'
             UNION ALL SELECT 'enum', enumlabel FROM pg_enum ORDER BY 1, 2"""


def _same_database(src: str, dst: str) -> None:
    assert table_checksums(dst) == table_checksums(src)
    for sql in (POLICIES, RLS, SEQS, OBJECTS):
        assert query(dst, sql) == query(src, sql), sql


def _url_for(src_url: str, dbname: str) -> str:
    return src_url.rsplit("/", 1)[0] + "/" + dbname


def test_backup_restored_into_new_database_is_identical(crm_db, make_services):
    # GIVEN a CRM database with roles, RLS, enums, jsonb, triggers, views, sequences, non-ASCII text
    services = make_services(crm_db)
    # WHEN it is backed up and restored into a new database
    outcome = services.backup(actor="tester", source="cli")
    restored, safety = services.restore(RestoreRequest(outcome.backup.id, mode="into", into="rt_copy"),
                                        actor="tester", source="cli")
    # THEN every table, sequence, policy and RLS flag is identical and the report is all green
    assert safety is None
    _same_database(crm_db, _url_for(crm_db, "rt_copy"))
    assert restored.report.ok, restored.report.lines()
    assert any("rows crm.notes" in line and "800 restored" in line for line in restored.report.lines())
    assert "ä" not in "" and query(_url_for(crm_db, "rt_copy"), "SELECT count(*) FROM crm.accounts WHERE name LIKE 'Müller%'")[0][0] > 0


def test_manifest_records_what_the_issue_lists(crm_db, make_services, tmp_path):
    services = make_services(crm_db)
    backup = services.backup(actor="tester", source="cli").backup
    manifest_path = tmp_path / "backups" / "prod" / f"{backup.id}.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for key in ("id", "target", "started_at", "finished_at", "duration_s", "server_version", "pg_dump_version",
                "database", "size_bytes", "sha256", "compression", "encryption_key_id", "tables", "rls_tables", "roles_dump"):
        assert key in manifest, key
    assert manifest["sha256"] == backup.sha256
    assert manifest["rls_tables"] == {"crm.deals": 2, "crm.notes": 1}
    deals = next(t for t in manifest["tables"] if t["name"] == "deals")
    assert deals["rows"] == 400 and deals["exact"] is True
    roles_sql = (tmp_path / "backups" / "prod" / f"{backup.id}.roles.sql").read_text()
    assert "CREATE ROLE crm_readonly" in roles_sql
    assert "PASSWORD" not in roles_sql.upper().replace("--NO-ROLE-PASSWORDS", "")


def test_large_tables_get_estimated_counts_flagged_as_estimates(crm_db, make_services):
    services = make_services(crm_db, EXACT_COUNT_MAX_ROWS="0")
    query(crm_db, "ANALYZE")
    backup = services.backup(actor="tester", source="cli").backup
    notes = next(t for t in backup.manifest["tables"] if t["name"] == "notes")
    assert notes["exact"] is False and notes["rows"] > 0


def test_encrypted_backup_round_trips_and_is_age_format(crm_db, make_services, tmp_path):
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "age.key"
    key_file.write_text(str(identity) + "\n")
    services = make_services(crm_db, ENCRYPTION_RECIPIENTS=str(identity.to_public()), AGE_IDENTITY_FILE=str(key_file))
    backup = services.backup(actor="tester", source="cli").backup
    stored = tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst.age"
    assert stored.read_bytes().startswith(b"age-encryption.org/v1")
    assert backup.encryption_key_id and backup.encryption_key_id.startswith("age:")
    assert all(c.ok for c in services.verify(backup.id, actor="t", source="cli"))
    services.restore(RestoreRequest(backup.id, mode="into", into="rt_encrypted"), actor="t", source="cli")
    _same_database(crm_db, _url_for(crm_db, "rt_encrypted"))


def test_encrypted_backup_without_identity_is_refused_clearly(crm_db, make_services, tmp_path):
    identity = pyrage.x25519.Identity.generate()
    services = make_services(crm_db, ENCRYPTION_RECIPIENTS=str(identity.to_public()))
    backup = services.backup(actor="tester", source="cli").backup
    results = services.verify(backup.id, actor="t", source="cli")
    assert not results[0].ok and "AGE_IDENTITY_FILE" in (results[0].error or "")
    # and that is our missing key, not a fault of the copy: nothing is recorded against it
    after = services.get_backup(backup.id)
    assert {c.destination: c.status for c in after.copies} == {"local": "stored"}
    assert after.verify_status == backup.verify_status


def test_backup_goes_to_s3_and_restores_from_s3_when_local_copy_is_gone(crm_db, make_services, s3_bucket, tmp_path):
    services = make_services(crm_db, S3_BUCKET=s3_bucket.bucket, S3_ENDPOINT_URL=s3_bucket.endpoint_url or "",
                             S3_PREFIX="team/db", S3_REGION="us-east-1")
    backup = services.backup(actor="tester", source="cli").backup
    assert {c.destination: c.status for c in backup.copies} == {"local": "stored", "s3": "stored"}
    s3_copy = next(c for c in backup.copies if c.destination == "s3")
    assert s3_copy.location.startswith(f"s3://{s3_bucket.bucket}/team/db/prod/")
    (tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst").unlink()
    restored, _ = services.restore(RestoreRequest(backup.id, mode="into", into="rt_from_s3"), actor="t", source="cli")
    assert restored.report.ok
    _same_database(crm_db, _url_for(crm_db, "rt_from_s3"))


def test_in_place_restore_brings_deleted_rows_back_and_keeps_a_safety_backup(crm_db, make_services):
    services = make_services(crm_db)
    backup = services.backup(actor="tester", source="cli").backup
    query(crm_db, "DELETE FROM crm.notes WHERE id > 100")
    restored, safety = services.restore(RestoreRequest(backup.id, mode="in-place"), actor="t", source="cli")
    assert restored.report.ok
    assert query(crm_db, "SELECT count(*) FROM crm.notes")[0][0] == 800
    assert safety is not None and "pre-restore" in safety.tags
    notes = next(t for t in safety.manifest["tables"] if t["name"] == "notes")
    assert notes["rows"] == 100  # the safety backup holds the state just before the restore


def test_one_table_restore_into_new_database(crm_db, make_services):
    services = make_services(crm_db)
    backup = services.backup(actor="tester", source="cli").backup
    restored, _ = services.restore(RestoreRequest(backup.id, mode="into", into="rt_one", table="crm.accounts"),
                                   actor="t", source="cli")
    dst = _url_for(crm_db, "rt_one")
    assert query(dst, "SELECT count(*) FROM crm.accounts")[0][0] == 200
    assert query(dst, "SELECT count(*) FROM pg_tables WHERE schemaname = 'crm'")[0][0] == 1
    assert restored.report.ok


LOOKALIKES = """
CREATE TABLE crm.deal (id serial PRIMARY KEY, title text);
CREATE INDEX deal_title_idx ON crm.deal (title);
CREATE INDEX deals_stage_idx ON crm.deals (stage);           -- 'deal' is in its name, not its table
CREATE TABLE crm.contacts_archive (id serial PRIMARY KEY, email text);  -- contacts_archive_id_seq
CREATE TABLE crm.tree (id int PRIMARY KEY, parent int REFERENCES crm.tree(id), label text);
CREATE SEQUENCE crm.shared_seq;                               -- used inline by two tables' defaults
CREATE TABLE crm.sa (id bigint DEFAULT nextval('crm.shared_seq') PRIMARY KEY);
CREATE TABLE crm.sb (id bigint DEFAULT nextval('crm.shared_seq') PRIMARY KEY);
INSERT INTO crm.sa DEFAULT VALUES; INSERT INTO crm.sb DEFAULT VALUES;
INSERT INTO crm.deal (title) SELECT 'd' || g FROM generate_series(1, 30) g;
INSERT INTO crm.contacts_archive (email) SELECT g || '@old.example' FROM generate_series(1, 5) g;
INSERT INTO crm.tree VALUES (1, NULL, 'root'), (2, 1, 'child');
"""


def _objects(url: str) -> set[str]:
    return {f"{kind}:{name}" for kind, name in query(url, """
        SELECT 'table', relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE nspname = 'crm' AND relkind IN ('r', 'S', 'i')
        UNION ALL SELECT 'constraint', conname FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
         WHERE nspname = 'crm'""")}


def test_one_table_takes_its_own_objects_by_the_archives_dependencies(crm_db, make_services):
    # GIVEN tables whose names contain one another's (deal / deals, contacts / contacts_archive),
    # and one that references itself
    query(crm_db, LOOKALIKES)
    services = make_services(crm_db)
    backup = services.backup(actor="tester", source="cli").backup
    # WHEN restoring crm.deal, crm.contacts and crm.tree each into a new database
    for table, db in [("crm.deal", "one_deal"), ("crm.contacts", "one_contacts"), ("crm.tree", "one_tree"),
                      ("crm.sa", "one_sa")]:
        restored, _ = services.restore(RestoreRequest(backup.id, mode="into", into=db, table=table),
                                       actor="t", source="cli")
        assert restored.report.ok, (table, restored.report.lines())
    # THEN each has its own table, sequence, indexes and constraints, and nothing of the look-alikes
    assert _objects(_url_for(crm_db, "one_deal")) == {
        "table:deal", "table:deal_id_seq", "table:deal_pkey", "table:deal_title_idx", "constraint:deal_pkey"}
    contacts = _objects(_url_for(crm_db, "one_contacts"))
    assert "table:contacts_id_seq" in contacts and not any("archive" in o for o in contacts), contacts
    assert query(_url_for(crm_db, "one_deal"), "SELECT count(*) FROM crm.deal") == [(30,)]
    # AND a sequence its default shares with another table comes along, at its value
    assert query(_url_for(crm_db, "one_sa"), "SELECT last_value FROM crm.shared_seq") == [(2,)]
    # AND a foreign key to itself comes along (the table it points at is there)
    assert "constraint:tree_parent_fkey" in _objects(_url_for(crm_db, "one_tree"))


def test_one_table_in_place_keeps_its_foreign_keys_and_leaves_shared_functions_alone(crm_db, make_services):
    # GIVEN crm.notes, whose foreign key points at crm.deals, and a trigger function other tables share
    services = make_services(crm_db)
    backup = services.backup(actor="tester", source="cli").backup
    before = _objects(crm_db)
    query(crm_db, "DELETE FROM crm.notes WHERE id > 700")
    # WHEN restoring just crm.notes over the database
    restored, _ = services.restore(RestoreRequest(backup.id, mode="in-place", table="crm.notes"),
                                   actor="t", source="cli", safety_backup=False)
    # THEN its rows are back, and it still has its foreign key: every object is as it was
    assert restored.report.ok, restored.report.lines()
    assert query(crm_db, "SELECT count(*) FROM crm.notes") == [(800,)]
    assert "constraint:notes_deal_id_fkey" in _objects(crm_db) and _objects(crm_db) == before
    # AND a table others depend on (crm.deals: notes' foreign key, a view) is refused with what to do
    from bot.errors import BackupbotError

    with pytest.raises(BackupbotError) as err:
        services.restore(RestoreRequest(backup.id, mode="in-place", table="crm.deals"), actor="t", source="cli",
                         safety_backup=False)
    assert "other objects (foreign keys, views) depend on crm.deals" in err.value.message
    assert "nothing was changed" in err.value.message and "--into" in err.value.message
    assert _objects(crm_db) == before


def test_restore_onto_fresh_server_with_roles_creates_missing_roles(crm_db, make_services, tmp_path):
    from bot.core.cluster import Cluster

    services = make_services(crm_db)
    backup = services.backup(actor="tester", source="cli").backup
    with Cluster(password="other-pw") as fresh:
        fresh.create_database("crm")
        restored, _ = services.restore(RestoreRequest(backup.id, mode="to", to_url=fresh.url("crm"), with_roles=True),
                                       actor="t", source="cli")
        assert {"crm_app", "crm_readonly", "sales_rep"} <= set(restored.roles_created)
        assert restored.report.ok, restored.report.lines()
        assert table_checksums(fresh.url("crm")) == table_checksums(crm_db)


def test_cli_backup_prints_id_last_and_list_json_has_the_contract_fields(crm_db, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "DATABASE_URL": crm_db, "BACKUP_DIR": str(tmp_path / "b"), "BACKUPBOT_DB": str(tmp_path / "c.db")}
    out = subprocess.run([sys.executable, "-m", "bot", "backup"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    backup_id = out.stdout.strip().splitlines()[-1]
    listed = subprocess.run([sys.executable, "-m", "bot", "list", "--json"], env=env, capture_output=True, text=True, cwd=tmp_path)
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [backup_id]
    for field in ("id", "target", "status", "created_at", "size_bytes", "sha256", "copies"):
        assert field in rows[0]
    assert rows[0]["status"] == "complete" and rows[0]["copies"][0]["status"] == "stored"
    assert "Sup3r-Secret" not in out.stdout + out.stderr + listed.stdout
    restored = subprocess.run([sys.executable, "-m", "bot", "restore", backup_id, "--into", "cli_copy"], env=env,
                              capture_output=True, text=True, cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert "✓ rows crm.deals" in restored.stdout
    assert Path(tmp_path / "b").exists()


def test_restore_to_a_configured_target_name_takes_a_safety_backup_first(crm_db, make_services, pg, tmp_path):
    # GIVEN two named targets, and a backup of one
    staging = pg.create_database("staging_db")
    cfg = tmp_path / "targets.toml"
    cfg.write_text(f'default_target = "prod"\n[targets.prod]\ndatabase_url = "{crm_db}"\n'
                   f'[targets.staging]\ndatabase_url = "{staging}"\n')
    services = make_services(crm_db, BACKUPBOT_CONFIG=str(cfg))
    backup = services.backup("prod", actor="t", source="cli").backup
    # WHEN it is restored --to the other target by name
    restored, safety = services.restore(RestoreRequest(backup.id, mode="to", to_url="staging", with_roles=True),
                                        actor="t", source="cli")
    # THEN the overwritten target got a safety backup first, and now holds the data
    assert safety is not None and safety.target == "staging" and "pre-restore" in safety.tags
    assert restored.report.ok
    assert table_checksums(staging) == table_checksums(crm_db)


EDGES = """
CREATE TABLE crm.pp (id int, v text) PARTITION BY RANGE (id);
CREATE TABLE crm.pp_1 PARTITION OF crm.pp FOR VALUES FROM (0) TO (100);
CREATE TABLE crm.pp_2 PARTITION OF crm.pp FOR VALUES FROM (100) TO (200);
INSERT INTO crm.pp SELECT g, 'v' FROM generate_series(1, 150) g;
CREATE TABLE crm.u (id int PRIMARY KEY);
CREATE TABLE crm.t (id int);
INSERT INTO crm.u VALUES (1), (2); INSERT INTO crm.t VALUES (1), (2), (3);
ALTER TABLE crm.t ENABLE ROW LEVEL SECURITY;
CREATE POLICY restr ON crm.t AS RESTRICTIVE USING (id IN (SELECT id FROM crm.u));
CREATE TABLE crm.base (id int);
CREATE TABLE crm.kid (extra text) INHERITS (crm.base);
INSERT INTO crm.kid VALUES (1, 'x'), (2, 'y');
CREATE FUNCTION crm.secret() RETURNS int SECURITY DEFINER LANGUAGE sql AS 'SELECT 1';
REVOKE EXECUTE ON FUNCTION crm.secret() FROM PUBLIC;
"""


def test_one_table_with_partitions_policies_on_others_and_private_functions(crm_db, make_services):
    from bot.errors import BackupbotError

    query(crm_db, EDGES)
    services = make_services(crm_db)
    backup = services.backup(actor="tester", source="cli").backup

    def in_place(table: str):
        return services.restore(RestoreRequest(backup.id, mode="in-place", table=table), actor="t", source="cli",
                                safety_backup=False)

    # Over the database, a partitioned table or one partition is refused before anything happens
    for table in ("crm.pp", "crm.pp_1"):
        with pytest.raises(BackupbotError) as err:
            in_place(table)
        assert "partition" in err.value.message and "nothing was changed" in err.value.message, err.value.message
    assert query(crm_db, "SELECT count(*) FROM crm.pp") == [(150,)]
    assert query(crm_db, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'crm.pp'::regclass") == [(2,)]
    # Into a new database, a partitioned table comes with its partitions and their rows
    restored, _ = services.restore(RestoreRequest(backup.id, mode="into", into="one_pp", table="crm.pp"),
                                   actor="t", source="cli")
    assert query(_url_for(crm_db, "one_pp"), "SELECT count(*) FROM crm.pp") == [(150,)]
    # and a partition, or an inheritance child, comes with its parent's definition (not its rows)
    for table, db, rows in [("crm.pp_1", "one_pp_1", 99), ("crm.kid", "one_kid", 2)]:
        restored, _ = services.restore(RestoreRequest(backup.id, mode="into", into=db, table=table),
                                       actor="t", source="cli")
        assert restored.report.ok, (table, restored.report.lines())
        assert query(_url_for(crm_db, db), f"SELECT count(*) FROM ONLY {table}") == [(rows,)]
    # While crm.t's policy reads crm.u, crm.u cannot be replaced alone (refused, with what to do)
    with pytest.raises(BackupbotError) as err:
        in_place("crm.u")
    assert "depend on crm.u" in err.value.message and "nothing was changed" in err.value.message
    # Once tightened so it does not, restoring crm.u leaves crm.t's policy as it is now
    query(crm_db, "ALTER POLICY restr ON crm.t USING (false)")
    in_place("crm.u")
    assert query(crm_db, "SELECT qual FROM pg_policies WHERE policyname = 'restr'") == [("false",)]
    # and restoring crm.t brings its own policy back as the backup has it
    restored, _ = in_place("crm.t")
    assert "crm.u" in query(crm_db, "SELECT qual FROM pg_policies WHERE policyname = 'restr'")[0][0]
    # Into a new database, the schema's functions keep their grants (EXECUTE revoked from PUBLIC)
    services.restore(RestoreRequest(backup.id, mode="into", into="one_t", table="crm.t"), actor="t", source="cli")
    assert query(_url_for(crm_db, "one_t"), "SELECT has_function_privilege('public', 'crm.secret()', 'EXECUTE')") \
        == [(False,)]
