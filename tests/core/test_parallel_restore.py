"""Restores into a new database load with several pg_restore connections from a private local copy
of the archive; without room for that copy they stream in one transaction, as in-place ones do."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import zstandard

from bot.core import archive
from bot.core import restore as restore_mod
from bot.core.restore import RestoreRequest
from bot.errors import BackupbotError, ConfigError, RestoreError, StorageError
from tests.fixtures.pg import big_table, fake_bindir, query, table_checksums

# Records every call (one line per call, arguments joined by a tab) and, for a restore from a
# file, that file's permission bits, what it links to (for /proc/<pid>/fd/<n>), the temporary
# directory's listing and a copy of the file; then runs the real pg_restore.
RECORD_CALLS = """#!/bin/sh
last=""
for a in "$@"; do last="$a"; done
mode=""
target=""
if [ -f "$last" ]; then mode=$(stat -L -c %a "$last"); target=$(readlink "$last"); cp "$last" "@LOG@.archive"; fi
(IFS="$(printf '\\t')"; echo "$*	mode=$mode	target=$target	tempdir=$(ls @TMP@ | tr '\\n' ' ')") >> "@LOG@"
exec @REAL@/pg_restore "$@"
"""

# Loads everything, then reports failure: a restore that went wrong after writing data.
FAIL_AFTER_LOADING = """#!/bin/sh
for a in "$@"; do case "$a" in --list|--version) exec @REAL@/pg_restore "$@";; esac; done
@REAL@/pg_restore "$@"
echo "pg_restore: error: simulated failure after loading" >&2
exit 1
"""


def _url_for(src_url: str, dbname: str) -> str:
    return src_url.rsplit("/", 1)[0] + "/" + dbname


def _database_exists(src_url: str, name: str) -> bool:
    return bool(query(_url_for(src_url, "postgres"), "SELECT 1 FROM pg_database WHERE datname = %s", [name]))


def _recorder(tmp_path: Path, temp_dir: Path) -> tuple[Path, Path]:
    log = tmp_path / "calls.log"
    body = RECORD_CALLS.replace("@LOG@", str(log)).replace("@TMP@", str(temp_dir))
    return fake_bindir(tmp_path, {"pg_restore": body}), log


def _recorded(crm_db, make_services, tmp_path: Path, jobs: str, temp_dir: Path | None = None):
    """Services whose pg_restore calls are recorded, with one backup taken."""
    if temp_dir is None:
        temp_dir = tmp_path / "spool"
        temp_dir.mkdir()
    bindir, log = _recorder(tmp_path, temp_dir)
    services = make_services(crm_db, PG_BINDIR=str(bindir), RESTORE_JOBS=jobs, RESTORE_TEMP_DIR=str(temp_dir))
    return services, services.backup(actor="t", source="cli").backup, log, temp_dir


def _restore_calls(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "--dbname=" in line]


def _reordering_restore(services, backup, crm_db: str, dbname: str, temp_dir: Path):
    """A --to restore into a new, empty database that needs a seekable archive, as Supabase's does."""
    dest = _url_for(crm_db, dbname)
    query(_url_for(crm_db, "postgres"), f"CREATE DATABASE {dbname}")
    return restore_mod.restore(
        request=RestoreRequest(backup.id, mode="to", to_url=dest), backup=backup, dest_url=dest,
        catalog=services.catalog, storages=services.storages, identity_file=None, bindir=None,
        actor="t", source="cli", seekable_archive=True, temp_dir=temp_dir)


def _tiny_tmpfs(path: Path, size: str) -> Path:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    assert done.returncode == 0, f"this suite runs as root and needs tmpfs mounts: {done.stderr!r}"
    return path


def test_restore_into_loads_in_parallel_from_a_private_copy_that_is_removed(crm_db, make_services, tmp_path):
    # GIVEN two restore connections and a temporary directory of our own
    services, backup, log, temp_dir = _recorded(crm_db, make_services, tmp_path, "2")
    said: list[str] = []
    # WHEN restoring into a new database
    outcome, _ = services.restore(RestoreRequest(backup.id, mode="into", into="par_copy"), actor="t",
                                  source="cli", progress=said.append)
    # THEN pg_restore loaded with two connections from a 0600 file in that directory, not in one
    # transaction; a file without a name there (its data is in clear), reached through /proc
    calls = _restore_calls(log)
    assert len(calls) == 1, calls
    assert "--jobs=2" in calls[0] and "--single-transaction" not in calls[0]
    assert "mode=600" in calls[0], calls[0]
    target = calls[0].split("target=")[1].split("\t")[0]
    assert target.startswith(f"{temp_dir}/backupbot-") and target.endswith(" (deleted)"), target
    assert calls[0].split("tempdir=")[1].strip() == "", calls[0]
    assert any("loading with 2 connections" in m for m in said), said
    # AND the archive it read records where each table's data starts, as `pg_dump -f` would have
    fd = os.open(log.with_name(log.name + ".archive"), os.O_RDONLY)
    toc = archive.read_toc(fd)
    os.close(fd)
    assert toc.unset == [] and len(toc.offsets) >= 5, toc
    # AND the copy is identical and verified, and the unpacked archive is gone
    assert table_checksums(_url_for(crm_db, "par_copy")) == table_checksums(crm_db)
    assert outcome.report.ok, outcome.report.lines()
    assert list(temp_dir.iterdir()) == []


def test_manifest_records_the_uncompressed_archive_size(crm_db, make_services, tmp_path):
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    stored = tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst"
    with stored.open("rb") as f:
        unpacked = len(zstandard.ZstdDecompressor().stream_reader(f).read())
    manifest = json.loads((tmp_path / "backups" / "prod" / f"{backup.id}.manifest.json").read_text())
    assert manifest["archive_bytes"] == unpacked > backup.size_bytes


def test_encrypted_backup_records_its_archive_size_too(crm_db, make_services, tmp_path):
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "age.key"
    key_file.write_text(str(identity))
    services = make_services(crm_db, ENCRYPTION_RECIPIENTS=str(identity.to_public()),
                             AGE_IDENTITY_FILE=str(key_file))
    backup = services.backup(actor="t", source="cli").backup
    plain = pyrage.decrypt((tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst.age").read_bytes(), [identity])
    unpacked = len(zstandard.ZstdDecompressor().stream_reader(plain).read())
    assert backup.manifest["archive_bytes"] == unpacked
    # and the parallel path decrypts on its way to the local copy
    outcome, _ = services.restore(RestoreRequest(backup.id, mode="into", into="par_enc"), actor="t", source="cli")
    assert outcome.report.ok and table_checksums(_url_for(crm_db, "par_enc")) == table_checksums(crm_db)


def test_one_job_streams_in_one_transaction_without_a_temporary_file(crm_db, make_services, tmp_path):
    services, backup, log, _ = _recorded(crm_db, make_services, tmp_path, "1")
    services.restore(RestoreRequest(backup.id, mode="into", into="one_job"), actor="t", source="cli")
    calls = _restore_calls(log)
    assert len(calls) == 1 and "--single-transaction" in calls[0] and "--jobs" not in calls[0]
    assert calls[0].endswith("tempdir=")  # nothing was unpacked while pg_restore ran
    assert table_checksums(_url_for(crm_db, "one_job")) == table_checksums(crm_db)


def test_in_place_restore_streams_in_one_transaction_whatever_the_jobs(crm_db, make_services, tmp_path):
    services, backup, log, _ = _recorded(crm_db, make_services, tmp_path, "4")
    services.restore(RestoreRequest(backup.id, mode="in-place"), actor="t", source="cli")
    calls = _restore_calls(log)
    assert calls and all("--single-transaction" in c and "--jobs" not in c for c in calls)


def test_too_little_temporary_space_streams_instead_and_says_so(crm_db, make_services, tmp_path):
    tiny = _tiny_tmpfs(tmp_path / "tiny", "1m")
    try:
        services, backup, log, _ = _recorded(crm_db, make_services, tmp_path, "2", tiny)
        said: list[str] = []
        outcome, _ = services.restore(RestoreRequest(backup.id, mode="into", into="no_room"), actor="t",
                                      source="cli", progress=said.append)
        assert any(str(tiny) in m and "loading from the stream in one transaction instead" in m for m in said), said
        assert "--single-transaction" in _restore_calls(log)[0]
        assert outcome.report.ok and table_checksums(_url_for(crm_db, "no_room")) == table_checksums(crm_db)
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def _understated(services, backup, monkeypatch):
    """Make the room check pass whatever the disk: a manifest that understates the archive (as an
    old or hand-edited one may) and no margin."""
    monkeypatch.setattr(restore_mod, "SPOOL_MARGIN", 0)
    backup.manifest["archive_bytes"] = 1
    monkeypatch.setattr(services, "get_backup", lambda _id: backup)


def test_disk_full_while_unpacking_falls_back_to_streaming(crm_db, make_services, tmp_path, monkeypatch):
    # GIVEN a tiny temporary directory that the room check wrongly believes big enough
    big_table(crm_db)
    tiny = _tiny_tmpfs(tmp_path / "tiny", "256k")
    try:
        services = make_services(crm_db, RESTORE_JOBS="2", RESTORE_TEMP_DIR=str(tiny))
        backup = services.backup(actor="t", source="cli").backup
        _understated(services, backup, monkeypatch)
        said: list[str] = []
        # WHEN restoring into a new database
        outcome, _ = services.restore(RestoreRequest(backup.id, mode="into", into="disk_full"), actor="t",
                                      source="cli", progress=said.append)
        # THEN the unpack gives way to the stream, says why, and leaves no file behind
        assert any("No space left on device" in m and "from the stream" in m for m in said), said
        assert outcome.report.ok and table_checksums(_url_for(crm_db, "disk_full")) == table_checksums(crm_db)
        assert list(tiny.iterdir()) == []
        # and the copy is not blamed for our full disk
        assert {c.destination: c.status for c in services.get_backup(backup.id).copies} == {"local": "stored"}
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def test_disk_full_while_unpacking_for_a_reordering_restore_is_one_clear_line(crm_db, make_services, tmp_path,
                                                                               monkeypatch):
    big_table(crm_db)
    tiny = _tiny_tmpfs(tmp_path / "tiny", "256k")
    try:
        services = make_services(crm_db)
        backup = services.backup(actor="t", source="cli").backup
        _understated(services, backup, monkeypatch)
        with pytest.raises(RestoreError) as err:
            _reordering_restore(services, backup, crm_db, "reorder_full", tiny)
        assert "No space left on device" in err.value.message and "RESTORE_TEMP_DIR" in err.value.message
        assert "nothing was changed" in err.value.message
        assert list(tiny.iterdir()) == []
        assert services.catalog.runs(kind="restore")[0]["status"] == "failed"
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def _encrypted_services(crm_db, make_services, tmp_path, **extra):
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "age.key").write_text(str(identity))
    return make_services(crm_db, ENCRYPTION_RECIPIENTS=str(identity.to_public()),
                         AGE_IDENTITY_FILE=str(tmp_path / "age.key"), RESTORE_JOBS="2", **extra)


def test_corrupt_encrypted_local_copy_is_marked_and_the_s3_copy_used(crm_db, make_services, s3_bucket, tmp_path):
    # GIVEN an encrypted backup of several MiB (age then fails before the whole copy is hashed)
    big_table(crm_db, mb=19)  # several MiB compressed: age fails before the whole copy is hashed
    services = _encrypted_services(crm_db, make_services, tmp_path, S3_BUCKET=s3_bucket.bucket,
                                   S3_ENDPOINT_URL=s3_bucket.endpoint_url or "", S3_REGION="us-east-1")
    backup = services.backup(actor="t", source="cli").backup
    stored = tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst.age"
    data = bytearray(stored.read_bytes())
    assert len(data) > 3 << 20
    data[len(data) // 3] ^= 0xFF
    stored.write_bytes(bytes(data))
    # WHEN restoring into a new database
    outcome, _ = services.restore(RestoreRequest(backup.id, mode="into", into="enc_from_s3"), actor="t", source="cli")
    # THEN the local copy is found corrupt and the S3 copy restores
    assert outcome.report.ok and table_checksums(_url_for(crm_db, "enc_from_s3")) == table_checksums(crm_db)
    assert {c.destination: c.status for c in services.get_backup(backup.id).copies} == {"local": "corrupt",
                                                                                         "s3": "stored"}


def test_a_read_failing_midway_is_not_blamed_on_the_key_or_the_copy(crm_db, make_services, tmp_path, monkeypatch):
    # GIVEN an encrypted backup whose stored copy can only be read part of the way, once (a
    # dropped connection)
    big_table(crm_db, mb=19)  # several MiB compressed: age fails before the whole copy is hashed
    services = _encrypted_services(crm_db, make_services, tmp_path)
    backup = services.backup(actor="t", source="cli").backup
    local = services.storages[0]
    real_open = local.open_reader

    class Dropping:
        def __init__(self, raw):
            self.raw, self.reads = raw, 0

        def read(self, n=-1):
            self.reads += 1
            if self.reads >= 3:  # the connection is gone for good
                raise StorageError("reading the local copy: connection reset")
            return self.raw.read(n)

        def close(self):
            self.raw.close()

    opened: list[str] = []

    def open_reader(key):  # the first reading drops; a second one (a re-check) would succeed
        opened.append(key)
        return Dropping(real_open(key)) if len(opened) == 1 else real_open(key)

    monkeypatch.setattr(local, "open_reader", open_reader)
    # WHEN restoring into a new database
    with pytest.raises(BackupbotError) as err:
        services.restore(RestoreRequest(backup.id, mode="into", into="dropped"), actor="t", source="cli")
    # THEN the error is the read's, and neither the key nor the copy is blamed
    assert "connection reset" in err.value.message and "decrypt" not in err.value.message
    assert isinstance(err.value, StorageError) and "could be read right now" in err.value.message
    after = services.get_backup(backup.id)
    assert {c.destination: c.status for c in after.copies} == {"local": "stored"}
    assert after.verify_status != "failed"
    assert not _database_exists(crm_db, "dropped")


def test_a_failed_parallel_restore_drops_the_database_it_created(crm_db, make_services, tmp_path):
    temp_dir = tmp_path / "spool"
    temp_dir.mkdir()
    bindir = fake_bindir(tmp_path, {"pg_restore": FAIL_AFTER_LOADING})
    services = make_services(crm_db, PG_BINDIR=str(bindir), RESTORE_JOBS="2", RESTORE_TEMP_DIR=str(temp_dir))
    backup = services.backup(actor="t", source="cli").backup
    with pytest.raises(BackupbotError) as err:
        services.restore(RestoreRequest(backup.id, mode="into", into="half_done"), actor="t", source="cli")
    assert "simulated failure" in err.value.message
    assert not _database_exists(crm_db, "half_done")
    assert list(temp_dir.iterdir()) == []


def test_corrupt_local_copy_falls_back_to_the_intact_s3_copy(crm_db, make_services, s3_bucket, tmp_path):
    services = make_services(crm_db, RESTORE_JOBS="2", S3_BUCKET=s3_bucket.bucket,
                             S3_ENDPOINT_URL=s3_bucket.endpoint_url or "", S3_REGION="us-east-1")
    backup = services.backup(actor="t", source="cli").backup
    stored = tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst"
    data = bytearray(stored.read_bytes())
    data[len(data) // 3] ^= 0xFF
    stored.write_bytes(bytes(data))
    outcome, _ = services.restore(RestoreRequest(backup.id, mode="into", into="from_s3"), actor="t", source="cli")
    assert outcome.report.ok and table_checksums(_url_for(crm_db, "from_s3")) == table_checksums(crm_db)
    copies = {c.destination: c.status for c in services.get_backup(backup.id).copies}
    assert copies == {"local": "corrupt", "s3": "stored"}


def test_a_restore_that_must_reorder_refuses_clearly_without_room(crm_db, make_services, tmp_path):
    # The Supabase --to restore needs a seekable archive: no room means no restore, said up front.
    tiny = _tiny_tmpfs(tmp_path / "tiny", "1m")
    try:
        services = make_services(crm_db)
        backup = services.backup(actor="t", source="cli").backup
        with pytest.raises(RestoreError) as err:
            _reordering_restore(services, backup, crm_db, "reorder_dest", tiny)
        assert str(tiny) in err.value.message and "RESTORE_TEMP_DIR" in err.value.message
        assert query(_url_for(crm_db, "reorder_dest"),
                     "SELECT count(*) FROM pg_tables WHERE schemaname = 'crm'") == [(0,)]
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def test_the_start_up_sweep_spares_an_archive_a_restore_still_holds(tmp_path, monkeypatch):
    import tempfile

    from bot.services import remove_stale_temp_files

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "sys"))
    (tmp_path / "sys").mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    held, free = mine / "backupbot-held.dump", mine / "backupbot-free.dump"
    for p in (held, free):
        p.write_bytes(b"PGDMP")
        past = time.time() - 7 * 3600
        os.utime(p, (past, past))
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert remove_stale_temp_files(mine) == [free]
        assert held.exists()
    finally:
        os.close(fd)
    assert remove_stale_temp_files(mine) == [held]


@pytest.mark.parametrize(("env", "message"), [
    ({"RESTORE_JOBS": "0"}, "RESTORE_JOBS must be at least 1"),
    ({"RESTORE_JOBS": "two"}, "RESTORE_JOBS must be a whole number"),
    ({"RESTORE_TEMP_DIR": "/no/such/dir"}, "RESTORE_TEMP_DIR"),
])
def test_restore_settings_are_validated_at_start(env, message):
    from bot.config import load_settings

    with pytest.raises(ConfigError) as err:
        load_settings({"DATABASE_URL": "postgresql://u@db.example.com/app", **env}, env_file=None)
    assert message in err.value.message


def test_a_wrong_key_is_not_blamed_on_the_copy(crm_db, make_services, tmp_path):
    # GIVEN an encrypted backup, and later a bot configured with another age key
    import pyrage

    right, wrong = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    (tmp_path / "right.key").write_text(str(right))
    (tmp_path / "wrong.key").write_text(str(wrong))
    backup = make_services(crm_db, ENCRYPTION_RECIPIENTS=str(right.to_public()),
                           AGE_IDENTITY_FILE=str(tmp_path / "right.key")).backup(actor="t", source="cli").backup
    services = make_services(crm_db, ENCRYPTION_RECIPIENTS=str(right.to_public()),
                             AGE_IDENTITY_FILE=str(tmp_path / "wrong.key"), RESTORE_JOBS="2")
    # WHEN restoring into a new database
    with pytest.raises(RestoreError) as err:
        services.restore(RestoreRequest(backup.id, mode="into", into="wrong_key"), actor="t", source="cli")
    # THEN the message names the key, and the copy stays stored and the backup good
    assert "cannot be decrypted" in err.value.message and "intact" in err.value.message
    after = services.get_backup(backup.id)
    assert {c.destination: c.status for c in after.copies} == {"local": "stored"}
    assert after.verify_status != "failed"
    assert not _database_exists(crm_db, "wrong_key")
    # WHEN verifying with the wrong key (by hand, or the weekly check)
    before = services.get_backup(backup.id)
    [check] = services.verify(backup.id, actor="t", source="cli")
    # THEN it fails naming the key, but records nothing against the copy or the backup
    assert not check.ok and check.key_problem and "AGE_IDENTITY_FILE" in (check.error or ""), check
    after = services.get_backup(backup.id)
    assert {c.destination: c.status for c in after.copies} == {"local": "stored"}
    assert (after.verify_status, after.verified_at) == (before.verify_status, before.verified_at)
    # AND with the right key the backup verifies and restores as if nothing happened
    fixed = make_services(crm_db, ENCRYPTION_RECIPIENTS=str(right.to_public()),
                          AGE_IDENTITY_FILE=str(tmp_path / "right.key"), RESTORE_JOBS="2")
    outcome, _ = fixed.restore(RestoreRequest(backup.id, mode="into", into="right_key"), actor="t", source="cli")
    assert outcome.report.ok
    # AND a corrupt copy is still called corrupt, whatever the key
    path = next((tmp_path / "backups").rglob(f"{backup.id}.dump.zst.age"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    [check] = services.verify(backup.id, actor="t", source="cli")
    assert not check.ok and not check.key_problem
    assert {c.destination: c.status for c in services.get_backup(backup.id).copies} == {"local": "corrupt"}


def test_content_damaged_before_its_checksum_is_corrupt_not_a_key_problem(crm_db, make_services, tmp_path):
    """A copy whose bytes match their recorded SHA-256 but do not decompress was damaged before
    it was hashed: that is the copy's fault, whatever the key."""
    import hashlib

    import pyrage

    right = pyrage.x25519.Identity.generate()
    (tmp_path / "right.key").write_text(str(right))
    services = make_services(crm_db, ENCRYPTION_RECIPIENTS=str(right.to_public()),
                             AGE_IDENTITY_FILE=str(tmp_path / "right.key"))
    backup = services.backup(actor="t", source="cli").backup
    # GIVEN the local copy replaced by a valid age file of random bytes, recorded as if it were the backup
    path = next((tmp_path / "backups").rglob(f"{backup.id}.dump.zst.age"))
    junk = pyrage.encrypt(os.urandom(200_000), [right.to_public()])
    path.write_bytes(junk)
    services.catalog.db.execute("UPDATE backups SET sha256 = ?, size_bytes = ? WHERE id = ?",
                                [hashlib.sha256(junk).hexdigest(), len(junk), backup.id])
    services.catalog.db.execute("UPDATE copies SET size_bytes = ? WHERE backup_id = ?", [len(junk), backup.id])
    # WHEN verifying with the right key THEN it is corrupt, and recorded so
    [check] = services.verify(backup.id, actor="t", source="cli")
    assert not check.ok and not check.key_problem, check
    assert {c.destination: c.status for c in services.get_backup(backup.id).copies} == {"local": "corrupt"}
    assert services.get_backup(backup.id).verify_status == "failed"


def test_a_copy_corrupt_on_its_own_is_recorded_beside_a_key_problem(crm_db, make_services, s3_bucket, tmp_path):
    import pyrage

    right, wrong = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    (tmp_path / "right.key").write_text(str(right))
    (tmp_path / "wrong.key").write_text(str(wrong))
    s3 = {"S3_BUCKET": s3_bucket.bucket, "S3_ENDPOINT_URL": s3_bucket.endpoint_url or "", "S3_REGION": "us-east-1",
          "ENCRYPTION_RECIPIENTS": str(right.to_public())}
    backup = make_services(crm_db, AGE_IDENTITY_FILE=str(tmp_path / "right.key"), **s3).backup(
        actor="t", source="cli").backup
    # GIVEN the local copy damaged, the S3 copy intact, and a bot holding the wrong key
    stored = tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst.age"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    services = make_services(crm_db, AGE_IDENTITY_FILE=str(tmp_path / "wrong.key"), **s3)
    # WHEN verifying
    checks = {c.destination: c for c in services.verify(backup.id, actor="t", source="cli")}
    # THEN the damaged copy is recorded corrupt, the intact one is left as it was
    assert not checks["local"].key_problem and checks["s3"].key_problem
    after = services.get_backup(backup.id)
    assert {c.destination: c.status for c in after.copies} == {"local": "corrupt", "s3": "stored"}
    assert after.verify_status == "failed"


def test_a_proc_path_that_leads_to_another_file_keeps_the_temporary_file_named(tmp_path, monkeypatch):
    # GIVEN a /proc that does not show this process's descriptors (another pid namespace)
    path = tmp_path / "backupbot-x.dump"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    decoy = tmp_path / "decoy"
    decoy.write_text("another process's file")
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(decoy) if str(p).startswith("/proc/") else
                        real_stat(p, *a, **k))
    try:
        # WHEN the restore's temporary file would be unlinked THEN it keeps its name, as the
        # only path a child can be sure to open, and no descriptor has to be passed
        alias, named = restore_mod._unname(path, fd)
        assert (alias, named) == (path, True) and path.exists()
        monkeypatch.undo()
        # AND where /proc is right, the file goes and /proc/self/fd/<n> is what children open
        alias, named = restore_mod._unname(path, fd)
        assert (str(alias), named) == (f"/proc/self/fd/{fd}", False) and not path.exists()
    finally:
        os.close(fd)
