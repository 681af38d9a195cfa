"""The README's manual restore path works with standard tools only, without backupbot."""

from __future__ import annotations

import os
import shutil
import subprocess

import pyrage

from bot.core.pgtools import find_bindir
from tests.fixtures.pg import table_checksums


def test_age_zstd_pg_restore_pipeline_restores_an_encrypted_backup(crm_db, make_services, pg, tmp_path):
    # GIVEN an encrypted backup and the age key file, and the standard age, zstd and pg_restore tools
    for tool in ("age", "zstd"):
        assert shutil.which(tool), f"{tool} must be installed (.ci/run installs it)"
    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(str(identity) + "\n")
    services = make_services(crm_db, ENCRYPTION_RECIPIENTS=str(identity.to_public()))
    backup = services.backup(actor="t", source="cli").backup
    dump = tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst.age"
    roles = tmp_path / "backups" / "prod" / f"{backup.id}.roles.sql.age"
    target = pg.create_database("manual_restore")
    env = {**os.environ, "PGPASSWORD": pg.password}
    bindir = find_bindir()
    # WHEN a person follows the README: check the checksum, then age -d | zstd -d | pg_restore
    sha = subprocess.run(["sha256sum", str(dump)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert sha == backup.sha256
    manifest = (tmp_path / "backups" / "prod" / f"{backup.id}.manifest.json").read_text()
    roles_sha = subprocess.run(["sha256sum", str(roles)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert f'"roles_sha256": "{roles_sha}"' in manifest
    roles_sql = subprocess.run(["age", "-d", "-i", str(key), str(roles)], capture_output=True, check=True).stdout
    assert b"CREATE ROLE crm_app" in roles_sql
    pipeline = (f"age -d -i '{key}' '{dump}' | zstd -d | '{bindir}/pg_restore' --exit-on-error "
                f"--single-transaction --no-password -h 127.0.0.1 -p {pg.port} -U postgres -d manual_restore")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], env=env, capture_output=True, text=True)
    # THEN the database is identical to the source
    assert done.returncode == 0, done.stderr
    assert table_checksums(target) == table_checksums(crm_db)


def test_unpacked_archive_restores_with_parallel_jobs(crm_db, make_services, pg, tmp_path):
    # GIVEN an unencrypted backup, unpacked with zstd as the README's faster manual path does
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    stored = tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst"
    unpacked = tmp_path / f"{backup.id}.dump"
    subprocess.run(f"zstd -d -c '{stored}' > '{unpacked}'", shell=True, check=True)  # noqa: S602
    assert unpacked.stat().st_size == backup.manifest["archive_bytes"]  # the room the README says it needs
    target = pg.create_database("manual_parallel")
    env = {**os.environ, "PGPASSWORD": pg.password}
    # WHEN pg_restore loads it with two connections
    done = subprocess.run([str(find_bindir() / "pg_restore"), "--exit-on-error", "--jobs=2", "--no-password",
                           "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", "manual_parallel",
                           str(unpacked)], env=env, capture_output=True, text=True)
    # THEN the database is identical to the source
    assert done.returncode == 0, done.stderr
    assert table_checksums(target) == table_checksums(crm_db)
