"""`backupbot rescan`: backups the destinations hold but the catalog lacks are recorded again."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.core.catalog import Catalog
from bot.core.restore import RestoreRequest
from bot.errors import BackupbotError
from tests.fixtures.pg import table_checksums


def _s3(s3_bucket) -> dict[str, str]:
    return {"S3_BUCKET": s3_bucket.bucket, "S3_ENDPOINT_URL": s3_bucket.endpoint_url or "", "S3_REGION": "us-east-1"}


def _listed(services) -> dict[str, dict]:
    """What `list --json` shows of each backup, minus what a rescan cannot know."""
    out = {}
    for b in services.list_backups():
        row = b.as_json()
        row.pop("verify_status"), row.pop("verified_at")
        row["tags"] = [t for t in row["tags"] if t != "rescanned"]
        row["copies"] = sorted((c["destination"], c["status"], c["size_bytes"], c["location"]) for c in row["copies"])
        out[b.id] = row
    return out


def test_a_lost_catalog_is_rebuilt_from_local_and_s3(crm_db, make_services, s3_bucket, tmp_path):
    # GIVEN two backups stored locally and in S3, then the catalog lost
    services = make_services(crm_db, **_s3(s3_bucket))
    ids = [services.backup(actor="t", source="cli").backup.id for _ in range(2)]
    before = _listed(services)
    fresh = make_services(crm_db, BACKUPBOT_DB=str(tmp_path / "new-catalog.db"), **_s3(s3_bucket))
    assert fresh.list_backups() == []
    # WHEN rescanning with --dry-run, THEN it says what it would record and records nothing
    dry = fresh.rescan(dry_run=True, actor="t", source="cli")
    assert sorted(a.backup_id for a in dry.adopted) == sorted(ids)
    assert all(sorted(a.destinations) == ["local", "s3"] for a in dry.adopted)
    assert fresh.list_backups() == []
    # WHEN rescanning for real
    result = fresh.rescan(dry_run=False, actor="t", source="cli")
    # THEN both backups are listed as they were, with both copies, but unverified
    assert not result.problems and not result.incomplete
    assert _listed(fresh) == before
    assert {(b.verify_status, "rescanned" in b.tags) for b in fresh.list_backups()} == {("unverified", True)}
    # AND they verify and restore like any other, and the rescan is in the audit log
    assert all(r.ok for r in fresh.verify(ids[0], actor="t", source="cli"))
    outcome, _ = fresh.restore(RestoreRequest(ids[1], mode="into", into="after_rescan"), actor="t", source="cli")
    assert outcome.report.ok and table_checksums(crm_db.rsplit("/", 1)[0] + "/after_rescan") == table_checksums(crm_db)
    assert fresh.catalog.audit_events(action="rescan")[0]["actor"] == "t"
    # AND a second rescan finds nothing new
    again = fresh.rescan(dry_run=False, actor="t", source="cli")
    assert again.adopted == [] and again.copies_added == []


def test_a_crash_between_storing_and_recording_is_recovered(crm_db, make_services, monkeypatch):
    # GIVEN a backup whose process dies after storing its files, before the catalog records it
    services = make_services(crm_db)

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt  # as good as a kill for what it leaves behind

    monkeypatch.setattr(services.catalog, "add_backup", crash)
    with pytest.raises(KeyboardInterrupt):
        services.backup(actor="t", source="cli")
    monkeypatch.undo()
    assert services.list_backups() == []
    # WHEN rescanning
    result = services.rescan(dry_run=False, actor="t", source="cli")
    # THEN the complete backup is listed and restorable
    assert len(result.adopted) == 1 and result.adopted[0].destinations == ["local"]
    backup = services.list_backups()[0]
    assert all(r.ok for r in services.verify(backup.id, actor="t", source="cli"))


def test_a_catalog_that_cannot_record_a_stored_backup_says_how_to_recover(crm_db, make_services, monkeypatch):
    # GIVEN a catalog that fails when the backup, already stored, is to be recorded
    services = make_services(crm_db)

    def full(*_args, **_kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(services.catalog, "add_backup", full)
    # WHEN backing up, THEN one clear line says the backup is stored and how to record it
    with pytest.raises(BackupbotError) as err:
        services.backup(actor="t", source="cli")
    assert "is stored (local) but the catalog could not record it (OperationalError: database or disk is full)" \
        in err.value.message and "`backupbot rescan` records it" in err.value.message
    # AND the run is marked failed with that line, and rescan then records the backup
    monkeypatch.undo()
    assert services.catalog.runs(kind="backup")[0]["error"] == err.value.message
    assert len(services.rescan(dry_run=False, actor="t", source="cli").adopted) == 1


def test_a_catalog_that_cannot_write_at_all_still_lets_the_reason_through(crm_db, make_services, monkeypatch):
    # GIVEN a catalog that can no longer write anything once the backup is stored
    services = make_services(crm_db)

    def locked(*_args, **_kwargs):
        raise sqlite3.OperationalError("database is locked")

    for method in ("add_backup", "finish_run"):
        monkeypatch.setattr(services.catalog, method, locked)
    audit = services.catalog.audit
    monkeypatch.setattr(services.catalog, "audit",
                        lambda action, **kw: locked() if action == "backup.failed" else audit(action, **kw))
    # WHEN backing up, THEN the error is the stored-but-not-recorded line, not the catalog's own failure
    with pytest.raises(BackupbotError) as err:
        services.backup(actor="t", source="cli")
    assert "is stored (local) but the catalog could not record it" in err.value.message
    assert "`backupbot rescan` records it" in err.value.message


def test_a_copy_the_catalog_lost_is_recorded_for_a_known_backup(crm_db, make_services, s3_bucket):
    # GIVEN a backup in local and S3 whose S3 copy the catalog no longer has (an older catalog)
    services = make_services(crm_db, **_s3(s3_bucket))
    backup = services.backup(actor="t", source="cli").backup
    with services.catalog.tx() as db:
        db.execute("DELETE FROM copies WHERE backup_id = ? AND destination = 's3'", [backup.id])
    # WHEN rescanning
    result = services.rescan(dry_run=False, actor="t", source="cli")
    # THEN the copy is recorded again, and nothing else changes
    assert result.copies_added == [(backup.id, "s3")] and result.adopted == []
    assert sorted(c.destination for c in services.get_backup(backup.id).copies) == ["local", "s3"]


def _cli(tmp_path: Path, crm_db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": crm_db, "BACKUP_DIR": str(tmp_path / "backups"),
           "BACKUPBOT_DB": str(tmp_path / "cli-catalog.db"), "BACKUP_TARGET": "prod", "BACKUP_TIMEZONE": "Europe/Paris"}
    return subprocess.run([sys.executable, "-m", "bot", "rescan", *args], env=env, capture_output=True, text=True,
                          cwd=tmp_path)


def test_leftovers_and_damaged_backups_are_reported_and_never_adopted(crm_db, make_services, tmp_path):
    # GIVEN a good backup, a dump without its manifest, one whose dump is cut short and one
    # whose manifest is not JSON, and an empty catalog
    services = make_services(crm_db)
    good, cut, garbled = (services.backup(actor="t", source="cli").backup for _ in range(3))
    prod = tmp_path / "backups" / "prod"
    (prod / "prod-20200101-000000-dead.dump.zst").write_bytes(b"half a dump")
    dump = prod / f"{cut.id}.dump.zst"
    dump.write_bytes(dump.read_bytes()[:-10])
    (prod / f"{garbled.id}.manifest.json").write_text("{not json")
    files = sorted(p.name for p in prod.iterdir())
    # WHEN rescanning into a new catalog from the CLI
    out = _cli(tmp_path, crm_db)
    # THEN the good one is adopted, the others are named with what is wrong, and exit status is 1
    assert out.returncode == 1, out.stderr
    adopted = [line for line in out.stdout.splitlines() if line.startswith(f"adopted {good.id} (target prod, ")]
    assert len(adopted) == 1 and re.search(r" CES?T, ", adopted[0]), out.stdout  # in the configured zone
    assert "left alone: prod/prod-20200101-000000-dead.dump.zst in local has no manifest" in out.stdout
    assert f"problem: local: prod/{cut.id}.dump.zst has " in out.stdout
    assert f"problem: local: prod/{garbled.id}.manifest.json is not a readable manifest" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "error: 2 problem(s) found while rescanning"
    # AND nothing was deleted, and only the good backup is in the catalog
    assert sorted(p.name for p in prod.iterdir()) == files
    listed = Catalog(tmp_path / "cli-catalog.db").list()
    assert [b.id for b in listed] == [good.id]
    # AND --json says the same to scripts
    rows = json.loads(_cli(tmp_path, crm_db, "--json", "--dry-run").stdout)
    assert rows["adopted"] == [] and {p["problem"].split(" ")[0] for p in rows["problems"]} == {
        f"prod/{cut.id}.dump.zst", f"prod/{garbled.id}.manifest.json"}


def test_recording_a_backup_a_rescan_adopted_first_completes_it(tmp_path):
    # GIVEN a backup that a rescan recorded while its own run was about to record it
    catalog = Catalog(tmp_path / "c.db")
    catalog.migrate()
    row = {"id": "b1", "target": "prod", "status": "complete", "kind": "manual", "tags": "", "created_at": "2026-11-29T01:00:00Z",
           "size_bytes": 10, "sha256": "a" * 64, "compression": "zstd", "object_key": "prod/b1.dump.zst", "manifest": "{}",
           "verify_status": "unverified", "run_id": None}
    from bot.core.catalog import Copy

    copy = Copy(destination="local", location="/x", status="stored", size_bytes=10)
    catalog.add_backup(row, [copy])
    # WHEN the run records it too, THEN there is one backup, with the run's details
    catalog.add_backup({**row, "run_id": 7}, [copy])
    assert [b.id for b in catalog.list()] == ["b1"] and len(catalog.get("b1").copies) == 1
    assert list(catalog.db.query("SELECT run_id FROM backups"))[0]["run_id"] == 7
    # AND a rescan that read the storage before never overwrites what the catalog has by now
    catalog.set_verify("b1", False, "corrupt")
    assert catalog.add_backup({**row, "run_id": None}, [copy], only_if_new=True) is False
    assert catalog.get("b1").verify_status == "failed" and catalog.add_copy("b1", copy) is False
    # BUT a different backup under the same id is refused
    with pytest.raises(BackupbotError, match="different backup with id b1"):
        catalog.add_backup({**row, "sha256": "b" * 64}, [copy])


def test_retention_keeps_rescanned_backups_until_they_are_verified(crm_db, make_services, tmp_path):
    # GIVEN three backups, a policy that keeps only the newest, and the catalog lost and rescanned
    services = make_services(crm_db, RETENTION_DAILY="1", RETENTION_MIN_VERIFIED="0")
    ids = [services.backup(actor="t", source="cli").backup.id for _ in range(3)]
    fresh = make_services(crm_db, BACKUPBOT_DB=str(tmp_path / "again.db"), RETENTION_DAILY="1",
                          RETENTION_MIN_VERIFIED="0")
    fresh.rescan(dry_run=False, actor="t", source="cli")
    # WHEN pruning, THEN nothing goes: none of them has been verified since
    result = fresh.prune(dry_run=True, actor="t", source="cli")[0]
    assert result.decision.delete == []
    assert result.decision.keep[ids[0]] == ["recorded by rescan, not verified since"]
    # WHEN they have been verified, THEN the policy applies again
    for backup_id in ids:
        fresh.verify(backup_id, actor="t", source="cli")
    assert sorted(fresh.prune(dry_run=True, actor="t", source="cli")[0].decision.delete) == sorted(ids[:2])


def test_only_our_own_files_are_considered(crm_db, make_services, tmp_path):
    # GIVEN a backup, and beside it: another deployment's files under a deeper prefix, a target not
    # configured here, and a manifest whose file list names another backup's files
    services = make_services(crm_db)
    good = services.backup(actor="t", source="cli").backup
    root = tmp_path / "backups"
    manifest = json.loads((root / "prod" / f"{good.id}.manifest.json").read_text())
    (root / "team" / "db" / "prod").mkdir(parents=True)
    for f in (root / "prod").iterdir():
        (root / "team" / "db" / "prod" / f.name).write_bytes(f.read_bytes())
    (root / "staging").mkdir()
    for f in (root / "prod").iterdir():
        (root / "staging" / f.name.replace("prod-", "staging-")).write_bytes(f.read_bytes())
    thief = "prod-20200101-000000-beef"
    (root / "prod" / f"{thief}.manifest.json").write_text(json.dumps({**manifest, "id": thief}))
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    # WHEN rescanning into a new catalog
    fresh = make_services(crm_db, BACKUPBOT_DB=str(tmp_path / "again.db"))
    result = fresh.rescan(dry_run=False, actor="t", source="cli")
    # THEN only our backup is recorded; the thief is a problem, the other target is named
    assert [a.backup_id for a in result.adopted] == [good.id]
    assert [p for _d, p in result.problems] == [
        f"prod/{thief}.manifest.json: its file list is not that of a backup with this id"]
    assert result.other_targets == {"staging"}
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == files


@pytest.mark.parametrize("field, value", [
    ("finished_at", "yesterday"), ("finished_at", 17), ("started_at", 12345), ("tags", 5), ("tags", [1]),
    ("profile", "plain"), ("duration_s", "long"), ("sha256", "a" * 64 + "\n"),
])
def test_a_manifest_with_odd_content_is_one_problem_and_the_rest_goes_on(crm_db, make_services, tmp_path,
                                                                         field, value):
    # GIVEN two backups, one of whose manifests holds something no backup writes
    services = make_services(crm_db)
    odd, good = (services.backup(actor="t", source="cli").backup for _ in range(2))
    path = tmp_path / "backups" / "prod" / f"{odd.id}.manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    # WHEN rescanning into a new catalog
    fresh = make_services(crm_db, BACKUPBOT_DB=str(tmp_path / "again.db"))
    result = fresh.rescan(dry_run=False, actor="t", source="cli")
    # THEN the odd one is a problem, the good one is recorded, and the catalog reads fine
    assert [a.backup_id for a in result.adopted] == [good.id]
    assert len(result.problems) == 1 and result.problems[0][1].startswith(f"prod/{odd.id}.manifest.json: ")
    assert [b.id for b in fresh.list_backups()] == [good.id]


def test_a_target_whose_name_holds_a_slash_is_rescanned_too(crm_db, make_services, tmp_path):
    services = make_services(crm_db, BACKUP_TARGET="team/prod")
    backup = services.backup(actor="t", source="cli").backup
    fresh = make_services(crm_db, BACKUP_TARGET="team/prod", BACKUPBOT_DB=str(tmp_path / "again.db"))
    result = fresh.rescan(dry_run=False, actor="t", source="cli")
    assert [a.backup_id for a in result.adopted] == [backup.id] and not result.problems


def test_a_rescanned_backup_is_held_until_a_verify_vouches_or_finds_it_damaged(crm_db, make_services, tmp_path):
    # GIVEN two rescanned backups under a policy that keeps one, the older one's verify having failed
    services = make_services(crm_db, RETENTION_DAILY="1", RETENTION_MIN_VERIFIED="0")
    older, _newer = (services.backup(actor="t", source="cli").backup for _ in range(2))
    fresh = make_services(crm_db, BACKUPBOT_DB=str(tmp_path / "again.db"), RETENTION_DAILY="1",
                          RETENTION_MIN_VERIFIED="0")
    fresh.rescan(dry_run=False, actor="t", source="cli")
    fresh.catalog.set_verify(older.id, False, "the local copy could not be read right now")
    # WHEN pruning, THEN a verify that could not read it proves nothing: it is still held
    assert fresh.prune(dry_run=True, actor="t", source="cli")[0].decision.delete == []
    # WHEN a copy was found corrupt, THEN the policy applies to it again
    fresh.catalog.set_copy_status(older.id, "local", "corrupt", "sha256 mismatch")
    assert fresh.prune(dry_run=True, actor="t", source="cli")[0].decision.delete == [older.id]


def test_an_encrypted_backup_is_rescanned_and_verifies_with_its_key(crm_db, make_services, tmp_path):
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "age.key"
    key_file.write_text(str(identity) + "\n")
    keys = {"ENCRYPTION_RECIPIENTS": str(identity.to_public()), "AGE_IDENTITY_FILE": str(key_file)}
    backup = make_services(crm_db, **keys).backup(actor="t", source="cli").backup
    fresh = make_services(crm_db, BACKUPBOT_DB=str(tmp_path / "again.db"), **keys)
    result = fresh.rescan(dry_run=False, actor="t", source="cli")
    assert [a.backup_id for a in result.adopted] == [backup.id] and not result.problems
    assert fresh.get_backup(backup.id).encryption_key_id == backup.encryption_key_id
    assert all(r.ok for r in fresh.verify(backup.id, actor="t", source="cli"))
