"""Retention prunes every destination, never below the verified minimum; --dry-run deletes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_prune_deletes_older_backups_from_local_and_s3_and_dry_run_only_lists(crm_db, make_services, s3_bucket,
                                                                              s3_client, tmp_path):
    # GIVEN three backups today, copied to local disk and S3, and a policy keeping one per day
    env = {"S3_BUCKET": s3_bucket.bucket, "S3_ENDPOINT_URL": s3_bucket.endpoint_url or "", "S3_REGION": "us-east-1",
           "RETENTION_DAILY": "1", "RETENTION_WEEKLY": "0", "RETENTION_MONTHLY": "0", "RETENTION_MIN_VERIFIED": "0"}
    services = make_services(crm_db, **env)
    ids = [services.backup(actor="t", source="cli").backup.id for _ in range(3)]
    # WHEN pruning as a dry run
    dry = services.prune(dry_run=True, actor="t", source="cli")[0]
    # THEN it names the two older backups and deletes nothing
    assert sorted(dry.decision.delete) == sorted(ids[:2]) and dry.deleted == []
    assert len(services.list_backups()) == 3
    # WHEN pruning for real
    real = services.prune(dry_run=False, actor="t", source="cli")[0]
    # THEN the two older backups are gone from the catalog, the disk and the bucket
    assert sorted(real.deleted) == sorted(ids[:2])
    assert [b.id for b in services.list_backups()] == [ids[2]]
    local = sorted(p.name for p in (tmp_path / "backups" / "prod").iterdir())
    assert all(not name.startswith((ids[0], ids[1])) for name in local) and any(n.startswith(ids[2]) for n in local)
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket.bucket).get("Contents", [])]
    assert keys and all(ids[2] in k for k in keys)
    assert services.catalog.audit_events(action="prune")[0]["actor"] == "t"


def test_min_verified_protects_verified_backups(crm_db, make_services):
    services = make_services(crm_db, RETENTION_DAILY="1", RETENTION_WEEKLY="0", RETENTION_MONTHLY="0",
                             RETENTION_MIN_VERIFIED="2")
    ids = [services.backup(actor="t", source="cli").backup.id for _ in range(3)]
    for backup_id in ids[:2]:
        assert all(c.ok for c in services.verify(backup_id, actor="t", source="cli"))
    result = services.prune(dry_run=False, actor="t", source="cli")[0]
    # the newest (unverified) is kept as "newest"; the two verified ones by min-verified
    assert result.deleted == []
    assert set(result.decision.keep) == set(ids)


def test_cli_prune_dry_run_prints_what_would_go(crm_db, tmp_path):
    env = {**os.environ, "DATABASE_URL": crm_db, "BACKUP_DIR": str(tmp_path / "b"), "BACKUPBOT_DB": str(tmp_path / "c.db"),
           "RETENTION_DAILY": "1", "RETENTION_MIN_VERIFIED": "0", "RETENTION_WEEKLY": "0", "RETENTION_MONTHLY": "0"}
    run = [sys.executable, "-m", "bot"]
    first = subprocess.run([*run, "backup"], env=env, capture_output=True, text=True, cwd=tmp_path).stdout.split()[-1]
    subprocess.run([*run, "backup"], env=env, capture_output=True, text=True, cwd=tmp_path, check=True)
    out = subprocess.run([*run, "prune", "--dry-run"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and f"would delete {first}" in out.stdout
    listed = json.loads(subprocess.run([*run, "list", "--json"], env=env, capture_output=True, text=True, cwd=tmp_path).stdout)
    assert len(listed) == 2


def test_backup_being_restored_is_not_pruned(crm_db, make_services):
    # GIVEN two backups, a policy that would delete the older, and a restore reading the older
    services = make_services(crm_db, RETENTION_DAILY="1", RETENTION_WEEKLY="0", RETENTION_MONTHLY="0",
                             RETENTION_MIN_VERIFIED="0")
    older, newer = (services.backup(actor="t", source="cli").backup.id for _ in range(2))
    run_id = services.catalog.start_run("restore", "prod", "t", "cli", {"backup_id": older})
    # WHEN pruning THEN the older one is kept, and says why
    result = services.prune(dry_run=False, actor="t", source="cli")[0]
    assert result.deleted == [] and result.decision.keep[older] == ["in use by a restore"]
    # WHEN the restore has finished THEN it can go
    services.catalog.finish_run(run_id, "ok")
    assert services.prune(dry_run=False, actor="t", source="cli")[0].deleted == [older]
    assert [b.id for b in services.list_backups()] == [newer]


def test_a_changed_backup_dir_is_named_and_its_old_copies_neither_condemned_nor_orphaned(crm_db, make_services,
                                                                                          tmp_path):
    from bot.core.restore import RestoreRequest
    from bot.errors import StorageError

    policy = {"RETENTION_DAILY": "1", "RETENTION_WEEKLY": "0", "RETENTION_MONTHLY": "0", "RETENTION_MIN_VERIFIED": "0"}
    first = make_services(crm_db, **policy)
    old = [first.backup(actor="t", source="cli").backup for _ in range(2)]
    # GIVEN BACKUP_DIR changed afterwards (the files stayed where they were)
    moved = make_services(crm_db, BACKUP_DIR=str(tmp_path / "new-backups"), **policy)
    # WHEN verifying an old backup THEN it says where the copy is, and records nothing against it
    [check] = moved.verify(old[0].id, actor="t", source="cli")
    assert not check.ok and check.moved and str(tmp_path / "backups") in (check.error or "")
    assert "BACKUP_DIR" in (check.error or "")
    assert {c.destination: c.status for c in moved.get_backup(old[0].id).copies} == {"local": "stored"}
    # WHEN restoring it THEN the same explanation, and the copy is still not marked missing
    with pytest.raises(StorageError) as err:
        moved.restore(RestoreRequest(old[0].id, mode="into", into="moved_dir"), actor="t", source="cli")
    assert "BACKUP_DIR" in err.value.message
    assert {c.destination: c.status for c in moved.get_backup(old[0].id).copies} == {"local": "stored"}
    # WHEN a new backup makes the old ones due for pruning THEN they are not reported deleted
    # while their files stay: the prune names the problem and keeps their rows
    moved.backup(actor="t", source="cli")
    [result] = moved.prune(dry_run=False, actor="t", source="cli")
    assert set(result.errors) == {b.id for b in old} and result.deleted == []
    assert all("nothing was deleted" in e for e in result.errors.values())
    assert all((tmp_path / "backups" / "prod" / f"{b.id}.dump.zst").exists() for b in old)
    assert {b.id for b in old} <= {b.id for b in moved.list_backups()}
