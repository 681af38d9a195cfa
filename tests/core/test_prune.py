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
    # while their files stay: the prune names the problem and keeps their rows, and so does its
    # dry run, the operator's preview
    moved.backup(actor="t", source="cli")
    [preview] = moved.prune(dry_run=True, actor="t", source="cli")
    assert set(preview.errors) == {b.id for b in old} and all("BACKUP_DIR" in e for e in preview.errors.values())
    [result] = moved.prune(dry_run=False, actor="t", source="cli")
    assert set(result.errors) == {b.id for b in old} and result.deleted == []
    assert all("nothing was deleted" in e for e in result.errors.values())
    assert all((tmp_path / "backups" / "prod" / f"{b.id}.dump.zst").exists() for b in old)
    assert {b.id for b in old} <= {b.id for b in moved.list_backups()}


S3_POLICY = {"RETENTION_DAILY": "1", "RETENTION_WEEKLY": "0", "RETENTION_MONTHLY": "0", "RETENTION_MIN_VERIFIED": "0"}


def _s3_env(s3_bucket) -> dict[str, str]:
    return {"S3_BUCKET": s3_bucket.bucket, "S3_ENDPOINT_URL": s3_bucket.endpoint_url or "", "S3_REGION": "us-east-1"}


def _refusing_deletes(services, destination: str, monkeypatch, why: str) -> None:
    from bot.errors import StorageError

    storage = next(s for s in services.storages if s.name == destination)

    def refuse(_key: str) -> None:
        raise StorageError(why)

    monkeypatch.setattr(storage, "delete", refuse)


def _s3_keys(s3_client, s3_bucket) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket.bucket).get("Contents", [])]


def test_a_destination_failing_mid_prune_leaves_the_catalog_true_copy_by_copy(crm_db, make_services, s3_bucket,
                                                                              s3_client, tmp_path, monkeypatch):
    # GIVEN two backups on local disk and S3, a policy keeping one, and S3 refusing deletes
    services = make_services(crm_db, **_s3_env(s3_bucket), **S3_POLICY)
    old, new = (services.backup(actor="t", source="cli").backup for _ in range(2))
    _refusing_deletes(services, "s3", monkeypatch, "S3 said AccessDenied on DeleteObject")
    # WHEN pruning
    [result] = services.prune(dry_run=False, actor="t", source="cli")
    # THEN the backup stays listed, with its local copy recorded as deleted and its S3 copy as stored,
    # which is what the destinations hold
    assert result.deleted == [] and "AccessDenied" in result.errors[old.id]
    assert "(1 other copy was deleted)" in result.errors[old.id]
    copies = {c.destination: c.status for c in services.get_backup(old.id).copies}
    assert copies == {"local": "deleted", "s3": "stored"}
    assert not (tmp_path / "backups" / "prod" / f"{old.id}.dump.zst").exists()
    assert any(old.id in k for k in _s3_keys(s3_client, s3_bucket))
    # WHEN S3 accepts deletes again THEN the next prune finishes the job
    monkeypatch.undo()
    [again] = services.prune(dry_run=False, actor="t", source="cli")
    assert again.deleted == [old.id] and again.errors == {}
    assert all(old.id not in k for k in _s3_keys(s3_client, s3_bucket))
    assert [b.id for b in services.list_backups()] == [new.id]


def test_prune_without_a_destination_configured_deletes_nothing_it_cannot_reach(crm_db, make_services, s3_bucket,
                                                                                s3_client, tmp_path, monkeypatch,
                                                                                capsys):
    # GIVEN two backups on local disk and S3
    with_s3 = make_services(crm_db, **_s3_env(s3_bucket), **S3_POLICY)
    old, _new = (with_s3.backup(actor="t", source="cli").backup for _ in range(2))
    # WHEN the policy runs from settings without S3 (a dry run, then for real)
    local_only = make_services(crm_db, **S3_POLICY)
    [dry] = local_only.prune(dry_run=True, actor="t", source="cli")
    [real] = local_only.prune(dry_run=False, actor="t", source="cli")
    # THEN both name the S3 copy that would be left behind, and nothing of that backup goes:
    # the catalog never says "deleted" of data still in the bucket
    for result in (dry, real):
        assert "s3 copy would be left behind" in result.errors[old.id] and "S3_BUCKET" in result.errors[old.id]
    assert real.deleted == []
    assert {c.destination: c.status for c in local_only.get_backup(old.id).copies} == {"local": "stored",
                                                                                          "s3": "stored"}
    # AND the CLI's preview does not list it as going while saying it would not go
    from bot.cli import main
    from tests.fixtures.cli import empty_env_file

    for key, value in {"DATABASE_URL": crm_db, "BACKUP_TARGET": "prod", "BACKUP_DIR": str(tmp_path / "backups"),
                       "BACKUPBOT_DB": str(tmp_path / "catalog.db"), **S3_POLICY}.items():
        monkeypatch.setenv(key, value)
    assert main(["--env-file", empty_env_file(tmp_path), "prune", "--dry-run"]) == 1
    out, err = capsys.readouterr()
    assert f"would delete {old.id}" not in out and "would delete 0" in out, out
    assert f"error: would not delete {old.id}: its s3 copy would be left behind" in err
    assert any(old.id in k for k in _s3_keys(s3_client, s3_bucket))
    # WHEN S3 is configured again THEN the policy deletes it everywhere
    [done] = with_s3.prune(dry_run=False, actor="t", source="cli")
    assert done.deleted == [old.id] and all(old.id not in k for k in _s3_keys(s3_client, s3_bucket))


def test_a_prune_that_deleted_nothing_of_a_backup_says_so(crm_db, make_services, monkeypatch):
    # GIVEN local copies only, and a disk that refuses deletes
    services = make_services(crm_db, **S3_POLICY)
    old, _new = (services.backup(actor="t", source="cli").backup for _ in range(2))
    _refusing_deletes(services, "local", monkeypatch, "could not delete: Permission denied")
    # WHEN pruning THEN the error says nothing was deleted (not that other copies were)
    [result] = services.prune(dry_run=False, actor="t", source="cli")
    assert result.errors[old.id].endswith("Permission denied; nothing was deleted"), result.errors
    assert {c.destination: c.status for c in services.get_backup(old.id).copies} == {"local": "stored"}


def test_prune_on_an_unmounted_backup_disk_records_nothing_deleted(crm_db, make_services, tmp_path):
    # GIVEN two backups (the policy keeps one), then the backup disk unmounted: an empty mount point
    services = make_services(crm_db, **S3_POLICY)
    old, _new = (services.backup(actor="t", source="cli").backup for _ in range(2))
    (tmp_path / "backups").rename(tmp_path / "the-disk")
    (tmp_path / "backups").mkdir()
    # WHEN pruning
    [result] = services.prune(dry_run=False, actor="t", source="cli")
    # THEN the older backup is not recorded as deleted while its files are still on that disk
    assert result.deleted == [] and "is not there (an unmounted disk?)" in result.errors[old.id]
    assert {c.destination: c.status for c in services.get_backup(old.id).copies} == {"local": "stored"}
    assert (tmp_path / "the-disk" / "prod" / f"{old.id}.dump.zst").exists()
