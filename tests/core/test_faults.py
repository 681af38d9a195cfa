"""Faults give one clear message and leave nothing half-done in the catalog or on disk."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from bot.core.restore import RestoreRequest
from bot.errors import (
    BackupbotError,
    ConnectionFailed,
    IntegrityError,
    NotFound,
    RestoreError,
    StorageError,
    VersionMismatch,
)
from tests.fixtures.pg import PASSWORD, big_table, fake_bindir, query, table_checksums

KILL_AFTER_64K = """#!/usr/bin/env python3
import os, signal, subprocess, sys
if "--version" in sys.argv:
    os.execv("@REAL@/pg_dump", ["pg_dump", "--version"])
real = subprocess.Popen(["@REAL@/pg_dump", *sys.argv[1:]], stdout=subprocess.PIPE)
sent = 0
while sent < 65536:
    chunk = real.stdout.read(8192)
    if not chunk:
        break
    sys.stdout.buffer.write(chunk); sent += len(chunk)
sys.stdout.flush()
real.kill()
os.kill(os.getpid(), signal.SIGKILL)
"""

OLD_PG_DUMP = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 14.11"; exit 0; fi
exec @REAL@/pg_dump "$@"
"""


def _flip_a_byte(stored: Path) -> None:
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))


def _nothing_recorded(services) -> None:
    assert services.catalog.list() == []
    runs = services.catalog.runs(kind="backup")
    assert runs and runs[0]["status"] == "failed"


def _no_files(backup_dir: Path) -> None:
    leftovers = [p for p in backup_dir.rglob("*") if p.is_file()] if backup_dir.exists() else []
    assert leftovers == []


def test_wrong_password_is_one_clear_line_without_the_password(crm_db, make_services, tmp_path):
    from urllib.parse import quote

    wrong = crm_db.replace(quote(PASSWORD, safe=""), "Wr0ng-Pa55word-xyz")
    assert wrong != crm_db
    services = make_services(wrong)
    with pytest.raises(ConnectionFailed) as err:
        services.backup(actor="t", source="cli")
    assert "password authentication failed" in err.value.message
    assert "Wr0ng-Pa55word-xyz" not in err.value.message + err.value.detail + str(err.value)
    _nothing_recorded(services)
    assert "Wr0ng-Pa55word-xyz" not in str(services.catalog.runs())
    _no_files(tmp_path / "backups")


def test_unreachable_server_names_host_and_port(make_services, tmp_path):
    from bot.core.cluster import free_port

    port = free_port()
    services = make_services(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/crm")
    with pytest.raises(ConnectionFailed) as err:
        services.backup(actor="t", source="cli")
    assert f"127.0.0.1:{port}/crm" in err.value.message and PASSWORD not in err.value.message
    # the cause, not only libpq's hint after it, and on one line
    assert "connection refused" in err.value.message.lower(), err.value.message
    assert "\n" not in err.value.message and "\t" not in err.value.message
    _nothing_recorded(services)


def test_pg_dump_killed_mid_stream_leaves_no_backup_and_no_partial_file(crm_db, make_services, tmp_path):
    big_table(crm_db)
    services = make_services(crm_db, PG_BINDIR=str(fake_bindir(tmp_path, {"pg_dump": KILL_AFTER_64K})))
    with pytest.raises(BackupbotError) as err:
        services.backup(actor="t", source="cli")
    assert "pg_dump" in err.value.message and "signal 9" in err.value.message
    _nothing_recorded(services)
    _no_files(tmp_path / "backups")


def test_unwritable_backup_dir_is_refused_before_dumping(crm_db, make_services, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the backup directory should be")
    services = make_services(crm_db, BACKUP_DIR=str(blocker / "backups"))
    with pytest.raises(StorageError) as err:
        services.backup(actor="t", source="cli")
    assert str(blocker) in err.value.message
    _nothing_recorded(services)


def test_disk_full_midway_removes_the_partial_file(crm_db, make_services, tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    assert done.returncode == 0, f"this suite runs as root and needs tmpfs mounts: {done.stderr!r}"
    try:
        big_table(crm_db)
        services = make_services(crm_db, BACKUP_DIR=str(mount))
        with pytest.raises(StorageError) as err:
            services.backup(actor="t", source="cli")
        assert "disk full" in err.value.message
        _nothing_recorded(services)
        _no_files(mount)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_missing_s3_bucket_keeps_the_local_copy_and_records_the_failed_copy(crm_db, make_services, s3_server):
    services = make_services(crm_db, S3_BUCKET="no-such-bucket-" + uuid.uuid4().hex[:8], S3_ENDPOINT_URL=s3_server,
                             S3_REGION="us-east-1")
    outcome = services.backup(actor="t", source="cli")
    statuses = {c.destination: c.status for c in outcome.backup.copies}
    assert statuses == {"local": "stored", "s3": "failed"}
    assert "does not exist" in outcome.failed_copies["s3"] and "no-such-bucket" in outcome.failed_copies["s3"]
    assert services.catalog.runs(kind="backup")[0]["status"] == "partial"


def test_corrupted_copy_is_refused_by_verify_and_restore(crm_db, make_services, tmp_path):
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    _flip_a_byte(tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst")
    results = services.verify(backup.id, actor="t", source="cli")
    assert not results[0].ok and "corrupt" in (results[0].error or "")
    assert services.get_backup(backup.id).verify_status == "failed"
    with pytest.raises(IntegrityError):
        services.restore(RestoreRequest(backup.id, mode="into", into="never_created"), actor="t", source="cli")
    assert query(crm_db, "SELECT count(*) FROM pg_database WHERE datname = 'never_created'")[0][0] == 0


def test_unknown_backup_id_says_how_to_find_ids(crm_db, make_services):
    services = make_services(crm_db)
    with pytest.raises(NotFound) as err:
        services.restore(RestoreRequest("prod-20200101-000000-dead"), actor="t", source="cli")
    assert "no backup with id 'prod-20200101-000000-dead'" in err.value.message and "backupbot list" in err.value.message


@pytest.mark.parametrize("to", [
    "postgresql://postgres:Leaky-Pw%2142%@127.0.0.1/crm",  # a stray % after the password
    "not a url", "nosuchtarget", "postgresql://h/db?foo=bar", "host='unterminated",
])
def test_a_malformed_to_url_is_one_line_that_never_quotes_it(crm_db, make_services, to):
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    with pytest.raises(RestoreError) as err:
        services.restore(RestoreRequest(backup.id, mode="to", to_url=to), actor="t", source="cli")
    assert "nor a valid PostgreSQL connection URL" in err.value.message and "prod" in err.value.message
    assert "Leaky-Pw" not in err.value.message + err.value.detail and to not in err.value.message
    assert len(services.catalog.runs(kind="restore")) == 0  # refused before anything started


def test_pg_dump_older_than_server_is_refused(crm_db, make_services, tmp_path):
    services = make_services(crm_db, PG_BINDIR=str(fake_bindir(tmp_path, {"pg_dump": OLD_PG_DUMP})))
    with pytest.raises(VersionMismatch) as err:
        services.backup(actor="t", source="cli")
    assert "pg_dump 14 is older than the server (PostgreSQL 15" in err.value.message
    _nothing_recorded(services)


def test_supabase_transaction_pooler_is_refused_with_advice(make_services):
    services = make_services(f"postgresql://postgres.abc:{PASSWORD}@aws-0-eu-central-1.pooler.supabase.com:6543/postgres")
    with pytest.raises(ConnectionFailed) as err:
        services.backup(actor="t", source="cli")
    assert "transaction pooler" in err.value.message and "session pooler" in err.value.message
    assert PASSWORD not in err.value.message


def test_failed_in_place_restore_leaves_target_exactly_as_before(crm_db, make_services):
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    query(crm_db, "DELETE FROM crm.notes WHERE id > 700")
    # A conflicting object: a view the backup does not know depends on a table it must drop.
    query(crm_db, "CREATE VIEW public.note_bodies AS SELECT body FROM crm.notes")
    before = table_checksums(crm_db)
    with pytest.raises(BackupbotError) as err:
        services.restore(RestoreRequest(backup.id, mode="in-place"), actor="t", source="cli", safety_backup=False)
    assert "pg_restore failed" in err.value.message
    assert table_checksums(crm_db) == before
    assert services.catalog.runs(kind="restore")[0]["status"] == "failed"


def test_in_place_restore_of_a_corrupt_copy_fails_before_any_safety_backup(crm_db, make_services, tmp_path):
    # GIVEN a backup whose only copy has since been corrupted
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    _flip_a_byte(tmp_path / "backups" / "prod" / f"{backup.id}.dump.zst")
    query(crm_db, "DELETE FROM crm.notes WHERE id > 700")
    before = table_checksums(crm_db)
    said: list[str] = []
    # WHEN it is restored over the target
    with pytest.raises(IntegrityError) as err:
        services.restore(RestoreRequest(backup.id, mode="in-place"), actor="t", source="cli", progress=said.append)
    # THEN it fails on the copy at once: no safety backup was taken (minutes, on a real database)
    assert "no intact copy" in err.value.message, err.value.message
    assert not any("safety backup" in m for m in said), said
    assert [b.id for b in services.list_backups()] == [backup.id]
    assert table_checksums(crm_db) == before


def test_a_failed_safety_backup_says_the_restore_did_not_start(crm_db, make_services, tmp_path):
    # GIVEN a good backup, and then a pg_dump that can no longer back the target up
    backup = make_services(crm_db).backup(actor="t", source="cli").backup
    services = make_services(crm_db, PG_BINDIR=str(fake_bindir(tmp_path, {"pg_dump": OLD_PG_DUMP})))
    query(crm_db, "DELETE FROM crm.notes WHERE id > 700")
    before = table_checksums(crm_db)
    # WHEN it is restored over the target
    with pytest.raises(RestoreError) as err:
        services.restore(RestoreRequest(backup.id, mode="in-place"), actor="t", source="cli")
    # THEN the one line says which step failed, why, and that the target is unchanged
    msg = err.value.message
    assert "the safety backup of prod failed, so the restore did not start and prod is unchanged" in msg, msg
    assert "pg_dump 14 is older than the server" in msg
    assert getattr(err.value, "safety_backup", "unset") is None
    assert table_checksums(crm_db) == before
    assert [b.id for b in services.list_backups()] == [backup.id]


def test_ctrl_c_after_an_in_place_restore_committed_says_the_target_changed(crm_db, make_services, monkeypatch):
    from bot.core import restore as restore_mod

    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    query(crm_db, "DELETE FROM crm.notes WHERE id > 700")
    # GIVEN Ctrl-C arrives just after pg_restore committed, while the report is being made

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(restore_mod, "inspect_database", interrupted)
    with pytest.raises(RestoreError) as err:
        services.restore(RestoreRequest(backup.id, mode="in-place"), actor="t", source="cli", safety_backup=False)
    # THEN the message and the run say the target now holds the backup, not "interrupted" alone
    assert "pg_restore had already committed" in err.value.message and backup.id in err.value.message
    assert "interrupted" in err.value.message and err.value.exit_code == 130  # still an interruption
    assert "verification report did not run" in err.value.message
    run = services.catalog.runs(kind="restore")[0]
    assert run["status"] == "failed" and "already committed" in run["error"]
    assert query(crm_db, "SELECT count(*) FROM crm.notes WHERE id > 700")[0][0] > 0  # it did restore
    # AND the audit log has its end, as for any failed restore
    assert [e["action"] for e in services.catalog.audit_events(5)][0] == "restore.failed"
    # AND a SIGTERM there says so and keeps its own exit status

    def terminated(*_a, **_k):
        from bot.errors import Terminated

        raise Terminated

    monkeypatch.setattr(restore_mod, "inspect_database", terminated)
    with pytest.raises(RestoreError) as err:
        services.restore(RestoreRequest(backup.id, mode="in-place"), actor="t", source="cli", safety_backup=False)
    assert "terminated (SIGTERM)" in err.value.message and err.value.exit_code == 143


def test_a_changed_or_deleted_roles_dump_fails_verify_and_is_never_applied(crm_db, make_services, tmp_path):
    import hashlib

    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    roles = tmp_path / "backups" / "prod" / f"{backup.id}.roles.sql"
    assert backup.manifest["roles_sha256"] == hashlib.sha256(roles.read_bytes()).hexdigest()
    # GIVEN someone appended a superuser to the stored roles dump
    roles.write_text(roles.read_text() + "CREATE ROLE qa_injected;\nALTER ROLE qa_injected WITH SUPERUSER LOGIN;\n")
    # WHEN verifying THEN the copy fails, named as changed
    [check] = services.verify(backup.id, actor="t", source="cli")
    assert not check.ok and "roles dump" in (check.error or "") and "changed or damaged" in (check.error or "")
    assert {c.destination: c.status for c in services.get_backup(backup.id).copies} == {"local": "corrupt"}
    # AND reading it to apply it (restore --with-roles) refuses, whatever the copy's recorded state
    from bot.core import restore as restore_mod

    with pytest.raises(BackupbotError) as err:
        restore_mod.load_roles_sql(backup, services.storages[0], None)
    assert "changed or damaged" in err.value.message
    # AND a deleted roles dump is named too
    roles.unlink()
    [check] = services.verify(backup.id, actor="t", source="cli")
    assert not check.ok and "roles dump" in (check.error or "") and "is gone" in (check.error or "")


STALL_AFTER_64K = """#!/usr/bin/env python3
import os, subprocess, sys, time
if "--version" in sys.argv:
    os.execv("@REAL@/pg_dump", ["pg_dump", "--version"])
real = subprocess.Popen(["@REAL@/pg_dump", *sys.argv[1:]], stdout=subprocess.PIPE)
sys.stdout.buffer.write(real.stdout.read(65536)); sys.stdout.flush()
open("@STALLED@", "w").close()  # the backup is now waiting in the middle of its stream
time.sleep(120)
"""


def test_sigterm_during_a_cli_backup_cleans_up_and_says_so(crm_db, tmp_path):
    import os
    import signal
    import sys

    from bot.core.catalog import Catalog
    from tests.slack.support import until

    # GIVEN `backupbot backup` in the middle of writing (pg_dump stalls after 64 KiB)
    stalled = tmp_path / "stalled"
    script = STALL_AFTER_64K.replace("@STALLED@", str(stalled))
    env = {**os.environ, "DATABASE_URL": crm_db, "BACKUP_TARGET": "prod", "BACKUP_DIR": str(tmp_path / "b"),
           "BACKUPBOT_DB": str(tmp_path / "c.db"), "PG_BINDIR": str(fake_bindir(tmp_path, {"pg_dump": script}))}
    proc = subprocess.Popen([sys.executable, "-m", "bot", "backup"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    until(lambda: stalled.exists(), timeout=30, what="pg_dump stalled mid-stream")
    assert list((tmp_path / "b").rglob("*.partial-*"))  # the backup is writing its partial file
    # WHEN a supervisor stops it
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    # THEN it says so in one line, removes its partial file and closes its run as failed
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "error: terminated (SIGTERM)", err
    assert list((tmp_path / "b").rglob("*.partial-*")) == []
    runs = Catalog(tmp_path / "c.db").runs(kind="backup")
    assert runs[0]["status"] == "failed" and Catalog(tmp_path / "c.db").list() == []


def test_cli_failure_is_one_line_on_stderr_with_nonzero_exit(tmp_path):
    import os
    import sys

    env = {**os.environ, "DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/db", "BACKUP_DIR": str(tmp_path / "b"),
           "BACKUPBOT_DB": str(tmp_path / "c.db")}
    out = subprocess.run([sys.executable, "-m", "bot", "verify", "nope"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == ["error: no backup with id 'nope'; `backupbot list` shows the ids"]
    bad = subprocess.run([sys.executable, "-m", "bot", "list"], env={**env, "RETENTION_DAILY": "seven"},
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: invalid configuration: RETENTION_DAILY must be a whole number, got 'seven' (RETENTION_DAILY)"
    # A catalog that is not one (a stray file, a directory) is one line naming it, and is left as it was
    (tmp_path / "notes.txt").write_text("not a database")
    for path, why in [(tmp_path / "notes.txt", "file is not a database"), (tmp_path, "unable to open database file")]:
        out = subprocess.run([sys.executable, "-m", "bot", "list"], env={**env, "BACKUPBOT_DB": str(path)},
                             capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 1
        assert out.stderr.strip().splitlines() == [f"error: cannot open the catalog {path} (BACKUPBOT_DB): {why}"]
    assert (tmp_path / "notes.txt").read_text() == "not a database"


def test_restore_into_an_existing_database_is_refused_and_leaves_it_untouched(crm_db, make_services, pg):
    # GIVEN a database someone cares about, and a backup
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    precious = pg.create_database("precious_db")
    query(precious, "CREATE TABLE keep_me AS SELECT 1 AS x")
    # WHEN a restore "into" that name is asked for
    with pytest.raises(BackupbotError) as err:
        services.restore(RestoreRequest(backup.id, mode="into", into="precious_db"), actor="t", source="cli")
    # THEN it is refused and the database is still there with its data
    assert "already exists" in err.value.message and "nothing was changed" in err.value.message
    assert query(precious, "SELECT x FROM keep_me") == [(1,)]


LOG_ARGS = """#!/bin/sh
printf '%s\\n' "$@" > "@LOG@"
env | grep '^PGOPTIONS=' >> "@LOG@"
exec @REAL@/pg_restore "$@"
"""


def test_restore_session_gets_lock_timeout_and_maintenance_work_mem(crm_db, make_services, tmp_path):
    # GIVEN a pg_restore that records how it was called
    log = tmp_path / "pg_restore.args"
    bindir = fake_bindir(tmp_path, {"pg_restore": LOG_ARGS.replace("@LOG@", str(log))})
    services = make_services(crm_db, PG_BINDIR=str(bindir), RESTORE_MAINTENANCE_WORK_MEM="256MB")
    backup = services.backup(actor="t", source="cli").backup
    # WHEN restoring
    services.restore(RestoreRequest(backup.id, mode="into", into="with_options"), actor="t", source="cli")
    # THEN the session options reached the server connection (and no password is on the command line)
    called = log.read_text()
    assert "lock_timeout=60s" in called and "maintenance_work_mem=256MB" in called
    assert PASSWORD not in called.replace("PGOPTIONS", "")


def test_copy_found_corrupt_stops_counting_as_verified_for_retention(crm_db, make_services, tmp_path):
    # GIVEN two verified backups, the newer of which has since been corrupted on disk
    services = make_services(crm_db, RETENTION_DAILY="1", RETENTION_WEEKLY="0", RETENTION_MONTHLY="0",
                             RETENTION_MIN_VERIFIED="1")
    older, newer = (services.backup(actor="t", source="cli").backup for _ in range(2))
    for b in (older, newer):
        assert all(c.ok for c in services.verify(b.id, actor="t", source="cli"))
    stored = tmp_path / "backups" / "prod" / f"{newer.id}.dump.zst"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))
    # WHEN a restore discovers it
    with pytest.raises(IntegrityError):
        services.restore(RestoreRequest(newer.id, mode="into", into="from_corrupt"), actor="t", source="cli")
    # THEN the older, intact backup is the latest good one and retention keeps it
    assert services.get_backup(newer.id).verify_status == "failed"
    assert services.catalog.latest_good("prod").id == older.id
    result = services.prune(dry_run=True, actor="t", source="cli")[0]
    assert older.id in result.decision.keep and older.id not in result.decision.delete


def test_storage_error_while_verifying_fails_the_check_and_finishes_the_run(crm_db, make_services, monkeypatch):
    import io

    from bot.core.storage.local import LocalStorage

    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup

    class Broken(io.RawIOBase):
        def __init__(self, inner):
            self.inner, self.sent = inner, 0

        def read(self, n=-1):
            if self.sent > 2000:
                raise StorageError("connection reset while reading the copy")
            chunk = self.inner.read(min(n if n > 0 else 1024, 1024))
            self.sent += len(chunk)
            return chunk

    real = LocalStorage.open_reader
    monkeypatch.setattr(LocalStorage, "open_reader", lambda self, key: Broken(real(self, key)))
    results = services.verify(backup.id, actor="t", source="cli")
    assert not results[0].ok and "connection reset" in (results[0].error or "")
    assert services.catalog.runs(kind="verify")[0]["status"] == "failed"


def test_interrupted_backup_run_is_finished_not_left_running(crm_db, make_services, monkeypatch):
    import bot.core.dump as dump

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(dump, "encode", interrupted)
    services = make_services(crm_db)
    with pytest.raises(KeyboardInterrupt):
        services.backup(actor="t", source="cli")
    run = services.catalog.runs(kind="backup")[0]
    assert run["status"] == "failed" and "interrupted" in run["error"]
    assert services.catalog.list() == []


def test_runs_of_a_killed_command_are_settled_at_the_next_start(crm_db, make_settings):
    import json
    import sys

    from bot.core.catalog import Catalog, process_identity
    from bot.services import build_services

    settings = make_settings(crm_db)
    # GIVEN a restore run whose process was killed (kill -9 leaves it 'running'), ...
    killed = ("import os, signal, sys; from bot.core.catalog import Catalog; "
              "Catalog(sys.argv[1]).start_run('restore', 'prod', 'alice', 'cli', {'backup_id': 'b1'}); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", killed, str(settings.catalog_path)], capture_output=True)
    assert done.returncode == -9, done.stderr
    catalog = Catalog(settings.catalog_path)
    # ... a run of a live process (this one), one of a process in another pid namespace (a
    # container sharing the catalog: its pids mean nothing here), and one whose pid was recycled
    me = process_identity()
    assert me is not None
    catalog.start_run("verify", "prod", "bob", "cli")
    for kind, owner in (("drill", {**me, "pid": 999_999, "pidns": "pid:[1]"}),
                        ("prune", {**me, "start": me["start"] - 1})):
        run_id = catalog.start_run(kind, "prod", "carol", "cli")
        catalog.db.execute("UPDATE runs SET details = ? WHERE id = ?", [json.dumps({"owner": owner}), run_id])
    catalog.db.conn.commit()
    # WHEN the next command starts
    build_services(settings)
    # THEN the killed process's run and the recycled pid's run are settled, with the reason
    runs = {r["kind"]: r for r in Catalog(settings.catalog_path).runs()}
    assert runs["restore"]["status"] == "failed" and "is gone" in runs["restore"]["error"]
    assert runs["prune"]["status"] == "failed"
    # and the live one and the other namespace's are left alone
    assert runs["verify"]["status"] == "running" and runs["drill"]["status"] == "running"
    # a run settled by mistake that then succeeds does not keep the reason
    Catalog(settings.catalog_path).finish_run(runs["prune"]["id"], "ok")
    assert Catalog(settings.catalog_path).runs(kind="prune")[0]["error"] is None


FAIL_AT_ONCE = """#!/bin/sh
for a in "$@"; do case "$a" in --list|--version) exec @REAL@/pg_restore "$@";; esac; done
echo "pg_restore: error: simulated failure" >&2
exit 1
"""


def test_roles_created_by_a_failed_restore_are_removed(crm_db, make_services, tmp_path):
    from bot.core.cluster import Cluster

    # GIVEN a restore onto a fresh server that creates the backup's roles, then fails
    bindir = fake_bindir(tmp_path, {"pg_restore": FAIL_AT_ONCE})
    services = make_services(crm_db, PG_BINDIR=str(bindir))
    backup = services.backup(actor="t", source="cli").backup
    with Cluster(password="other-pw") as fresh:
        fresh.create_database("crm")
        before = {r[0] for r in query(fresh.url("postgres"), "SELECT rolname FROM pg_roles")}
        with pytest.raises(BackupbotError) as err:
            services.restore(RestoreRequest(backup.id, mode="to", to_url=fresh.url("crm"), with_roles=True),
                             actor="t", source="cli")
        # THEN the server's roles are as they were
        assert "simulated failure" in err.value.message
        assert {r[0] for r in query(fresh.url("postgres"), "SELECT rolname FROM pg_roles")} == before


def test_roles_stay_when_the_restore_failed_after_committing(crm_db, make_services, monkeypatch):
    import psycopg

    from bot.core import restore as restore_mod
    from bot.core.cluster import Cluster

    # GIVEN a role that owns nothing (an application login, access by membership only) ...
    query(crm_db, "CREATE ROLE app_login_only LOGIN; GRANT crm_readonly TO app_login_only")
    try:
        services = make_services(crm_db)
        backup = services.backup(actor="t", source="cli").backup
    finally:
        query(crm_db, "DROP ROLE app_login_only")
    # ... and a restore onto a fresh server whose data is committed, then the report fails

    def lost(*_a, **_k):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(restore_mod, "inspect_database", lost)
    with Cluster(password="other-pw") as fresh:
        fresh.create_database("crm")
        with pytest.raises(BackupbotError):
            services.restore(RestoreRequest(backup.id, mode="to", to_url=fresh.url("crm"), with_roles=True),
                             actor="t", source="cli")
        # THEN the roles the restored data needs are still there, with the data
        roles = {r[0] for r in query(fresh.url("postgres"), "SELECT rolname FROM pg_roles")}
        assert {"crm_app", "crm_readonly", "sales_rep", "app_login_only"} <= roles
        assert table_checksums(fresh.url("crm")) == table_checksums(crm_db)


def test_a_database_made_between_the_check_and_create_database_is_one_clear_line(crm_db, pg, monkeypatch):
    """Two --into restores started in the same second pick the same default name."""
    import psycopg

    from bot.core import restore as restore_mod
    from bot.core.pgtools import ConnInfo

    pg.create_database("raced_db")
    real = restore_mod._admin_conn

    class CheckSeesNothing:  # the existence check ran just before the other restore created it
        def __init__(self, conn: psycopg.Connection) -> None:
            self.conn = conn

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.conn.close()

        def execute(self, query, params=None):
            if str(query).startswith("SELECT 1 FROM pg_database"):
                return self.conn.execute("SELECT 1 WHERE false")
            return self.conn.execute(query, params)

    monkeypatch.setattr(restore_mod, "_admin_conn", lambda info: CheckSeesNothing(real(info)))
    with pytest.raises(RestoreError) as err:
        restore_mod._create_database(ConnInfo.parse(crm_db), "raced_db")
    assert "created by someone else just now" in err.value.message and "nothing was changed" in err.value.message


def test_a_backup_disk_that_is_not_mounted_is_not_written_underneath(crm_db, make_services, tmp_path):
    # GIVEN a backup on the backup disk, which is then unmounted: its empty mount point remains
    services = make_services(crm_db)
    first = services.backup(actor="t", source="cli").backup
    (tmp_path / "backups").rename(tmp_path / "the-disk")
    (tmp_path / "backups").mkdir()
    # WHEN the next backup runs
    with pytest.raises(StorageError) as err:
        services.backup(actor="t", source="cli")
    # THEN it refuses to fill the disk underneath, says why and what to do, and writes nothing
    folder = tmp_path / "backups" / "prod"
    assert f"{folder} is not there, though 1 backup(s) of prod were stored in it: is the disk unmounted?" in \
        err.value.message and f"mkdir -p {folder}" in err.value.message
    assert list((tmp_path / "backups").iterdir()) == []
    assert [b.id for b in services.list_backups()] == [first.id]
    # AND when those backups are really gone, creating the folder lets backups go ahead
    folder.mkdir()
    assert services.backup(actor="t", source="cli").backup.status == "complete"


@pytest.mark.parametrize("case", ["tampered roles dump", "table not in the backup"])
def test_what_can_refuse_without_the_target_refuses_before_any_safety_backup(crm_db, make_services, tmp_path, case):
    # GIVEN a backup, and a restore over the target that cannot succeed for a reason of its own
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    if case == "tampered roles dump":
        roles = tmp_path / "backups" / "prod" / f"{backup.id}.roles.sql"
        roles.write_text(roles.read_text() + "\nCREATE ROLE intruder;\n")
        req = RestoreRequest(backup.id, mode="in-place", with_roles=True)
    else:
        req = RestoreRequest(backup.id, mode="in-place", table="crm.no_such_table")
    said: list[str] = []
    # WHEN it is asked for
    with pytest.raises(BackupbotError) as err:
        services.restore(req, actor="t", source="cli", progress=said.append)
    # THEN it refuses before the safety backup: none was taken, nothing was touched
    assert ("roles dump" in err.value.message) if case == "tampered roles dump" else (
        "crm.no_such_table is not in backup" in err.value.message), err.value.message
    assert not any("safety backup" in m for m in said), said
    assert [b.id for b in services.list_backups()] == [backup.id]


def test_a_safety_backup_failing_on_something_unexpected_still_says_the_restore_did_not_start(crm_db, make_services,
                                                                                             monkeypatch):
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(services, "_backup_locked", disk_full)
    with pytest.raises(RestoreError) as err:
        services.restore(RestoreRequest(backup.id, mode="in-place"), actor="t", source="cli")
    assert err.value.message.startswith("the safety backup of prod failed, so the restore did not start and prod is "
                                        "unchanged: OSError"), err.value.message


def test_a_profile_filter_does_not_delay_the_table_check_past_the_safety_backup(crm_db, make_services):
    from bot.core import restore as restore_mod

    # GIVEN a restore with a profile's TOC filter (as Supabase's) and a --table the backup lacks
    services = make_services(crm_db)
    backup = services.backup(actor="t", source="cli").backup
    happened: list[str] = []
    with pytest.raises(BackupbotError) as err:
        restore_mod.restore(
            request=RestoreRequest(backup.id, mode="in-place", table="crm.no_such_table"), backup=backup,
            dest_url=crm_db, catalog=services.catalog, storages=services.storages, identity_file=None, bindir=None,
            actor="t", source="cli", toc_filter=lambda entries, _ctx: happened.append("filter") or entries,
            before_load=lambda: happened.append("safety backup"))
    # THEN it refuses before the safety backup, and before the filter reads the destination
    assert "crm.no_such_table is not in backup" in err.value.message
    assert happened == []


def test_a_local_folder_vanishing_mid_backup_fails_that_copy_only(crm_db, make_services, s3_bucket, tmp_path,
                                                                  monkeypatch):
    import shutil

    # GIVEN local and S3 destinations, and the local folder vanishing while the manifest is written
    services = make_services(crm_db, S3_BUCKET=s3_bucket.bucket, S3_ENDPOINT_URL=s3_bucket.endpoint_url or "",
                             S3_REGION="us-east-1")
    local = next(s for s in services.storages if s.name == "local")

    def vanish(key: str, data: bytes):
        shutil.rmtree(tmp_path / "backups" / "prod")
        raise StorageError(f"could not write {key}: the disk went away")

    monkeypatch.setattr(local, "put_bytes", vanish)
    # WHEN backing up THEN the S3 copy is recorded and the local one reported failed, with its reason
    outcome = services.backup(actor="t", source="cli")
    assert {c.destination: c.status for c in outcome.backup.copies} == {"local": "failed", "s3": "stored"}
    assert "stored the dump but not its manifest: could not write" in outcome.failed_copies["local"]
