"""The weekly integrity check and the restore drill against real PostgreSQL (and S3 on moto):
every copy re-verified, missing/corrupt copies and local/S3 disagreement alerted; a drill
records its RTO and always drops its scratch database."""

from __future__ import annotations

from typing import Any

from bot.cli import main
from bot.core.alerts import Alerts
from bot.core.drill import database_exists, last_drill, run_drill
from bot.core.evidence import Evidence
from bot.core.jobs import Runtime, drill_job, integrity_job
from bot.core.monitoring import Alarms
from bot.core.pgtools import ConnInfo
from bot.core.schedule_settings import ScheduleSettings
from tests.fakes.poster import RecordingPoster
from tests.fixtures.cli import empty_env_file
from tests.fixtures.pg import query


def runtime_for(services: Any) -> tuple[Runtime, RecordingPoster, list[str]]:
    poster = RecordingPoster()
    events: list[str] = []
    services.listeners.append(lambda event, _data: events.append(event))
    return Runtime(services, ScheduleSettings.from_settings(services.settings), poster), poster, events


def test_integrity_check_finds_a_missing_s3_copy_and_the_disagreement_with_local(crm_db, make_services, s3_bucket,
                                                                                 s3_client):
    # GIVEN two backups stored locally and on S3
    services = make_services(crm_db, S3_BUCKET=s3_bucket.bucket, S3_ENDPOINT_URL=s3_bucket.endpoint_url or "",
                             S3_REGION="us-east-1")
    rt, poster, events = runtime_for(services)
    good = services.backup(actor="t", source="cli").backup
    lost = services.backup(actor="t", source="cli").backup
    # WHEN all is well, the weekly check says so
    report = integrity_job(rt)
    assert report.ok and report.checked_copies == 4 and "all intact" in poster.texts()[-1]
    assert "integrity.alert" not in events
    # WHEN the S3 copy of one backup disappears
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket.bucket)["Contents"]]
    s3_client.delete_object(Bucket=s3_bucket.bucket, Key=next(k for k in keys if k.endswith(lost.object_key)))
    report = integrity_job(rt)
    # THEN the missing copy and the local/S3 disagreement are both findings for that backup only
    assert sorted(f.kind for f in report.findings) == ["disagree", "missing"]
    assert {f.backup_id for f in report.findings} == {lost.id}
    assert any("local stored, s3 missing" in f.text for f in report.findings)
    assert events.count("integrity.alert") == 1
    (alert,) = [a for a in Alerts(services.catalog).open_alerts() if a.kind == "integrity"]
    assert alert.target == "prod" and lost.id in alert.detail and good.id not in alert.detail
    assert poster.texts()[-1].startswith("⚠ Integrity check: 2 problem(s)")
    # and the checklist's evidence points at it
    assert Evidence(services, rt.sched, services.clock()).gather({"integrity"})["integrity"].startswith("⚠")


def test_a_corrupt_local_copy_is_found(crm_db, make_services, tmp_path):
    services = make_services(crm_db)
    rt, _poster, events = runtime_for(services)
    backup = services.backup(actor="t", source="cli").backup
    path = tmp_path / "backups" / backup.object_key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = integrity_job(rt)
    assert [f.kind for f in report.findings] == ["corrupt"] and "integrity.alert" in events


def test_drill_restores_the_newest_backup_records_the_rto_and_drops_the_scratch_db(crm_db, make_services):
    # GIVEN a backup
    services = make_services(crm_db)
    rt, poster, events = runtime_for(services)
    backup = services.backup(actor="t", source="cli").backup
    # WHEN the monthly drill runs
    (result,) = drill_job(rt)
    # THEN the newest backup was restored and verified, the RTO recorded, the scratch db dropped
    assert result.ok, result.error
    assert result.backup is not None and result.backup.id == backup.id
    assert result.rto_s is not None and result.rto_s > 0 and result.dropped
    (run,) = services.catalog.runs(kind="drill")
    assert run["status"] == "ok" and run["rto_s"] == result.rto_s and run["backup_id"] == backup.id
    dbname = result.scratch.rsplit("/", 1)[1] if result.scratch else ""
    assert dbname.startswith("drill_prod_")
    assert query(crm_db, "SELECT count(*) FROM pg_database WHERE datname = %s", [dbname]) == [(0,)]
    assert not database_exists(ConnInfo({**ConnInfo.parse(crm_db).params, "dbname": dbname}).conninfo())
    assert "RTO" in poster.texts()[-1] and "dropped" in poster.texts()[-1]
    last = last_drill(services)
    assert last is not None and last.ok and last.rto_s == result.rto_s
    assert "RTO" in Evidence(services, rt.sched, services.clock()).gather({"drill"})["drill"]
    assert "drill.alert" not in events


def test_drill_without_a_backup_fails_with_an_alert(make_services):
    services = make_services("postgresql://app:pw@127.0.0.1:1/crm")
    _rt, _poster, events = runtime_for(services)
    result = run_drill(services, alarms=Alarms(services))
    assert not result.ok and "no backup of prod" in (result.error or "")
    assert events == ["drill.alert"]
    assert services.catalog.runs(kind="drill")[0]["status"] == "failed"


def test_backupbot_drill_cli_prints_the_rto(crm_db, make_services, monkeypatch, capsys, tmp_path):
    services = make_services(crm_db)
    services.backup(actor="t", source="cli")
    for key, value in {"DATABASE_URL": crm_db, "BACKUP_DIR": str(tmp_path / "backups"),
                       "BACKUPBOT_DB": str(tmp_path / "catalog.db"), "BACKUP_TARGET": "prod"}.items():
        monkeypatch.setenv(key, value)
    code = main(["--env-file", empty_env_file(tmp_path), "drill", "--target", "prod"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(RTO)" in out and "dropped" in out


def test_a_backup_pruned_while_the_integrity_check_runs_is_no_finding(crm_db, make_services):
    # GIVEN three backups and a policy that keeps only the newest; the check starts with the newest
    services = make_services(crm_db, RETENTION_DAILY="1", RETENTION_WEEKLY="0", RETENTION_MONTHLY="0",
                             RETENTION_MIN_VERIFIED="0")
    rt, _poster, events = runtime_for(services)
    newest, middle, oldest = reversed([services.backup(actor="t", source="cli").backup for _ in range(3)])
    real_verify = services.verify
    order: list[str] = []

    def verify_while_pruning(backup_id: str, **kw: Any):
        order.append(backup_id)
        if backup_id == middle.id:  # a scheduled backup's prune runs just before this verify...
            assert services.prune(dry_run=False, actor="t", source="cli")[0].deleted == [oldest.id, middle.id]
        return real_verify(backup_id, **kw)

    services.verify = verify_while_pruning  # type: ignore[method-assign]
    # WHEN the weekly integrity check runs
    report = integrity_job(rt)
    # THEN the backups retention deleted meanwhile are neither findings nor checked: no false alarm
    assert order == [newest.id, middle.id, oldest.id], order  # the oldest was gone before its turn
    assert report.findings == [] and report.checked_backups == 1, report.findings
    assert "integrity.alert" not in events


def test_copies_unreadable_during_the_check_are_not_condemned_and_prune_keeps_them(crm_db, make_services, tmp_path,
                                                                                    s3_bucket, monkeypatch):
    from datetime import timedelta

    from bot.core.catalog import iso, utcnow
    from bot.errors import StorageError

    # GIVEN three verified backups on local disk and S3, from three past days
    services = make_services(crm_db, S3_BUCKET=s3_bucket.bucket, S3_ENDPOINT_URL=s3_bucket.endpoint_url or "",
                             S3_REGION="us-east-1")
    rt, _poster, events = runtime_for(services)
    backups = [services.backup(actor="t", source="cli").backup for _ in range(3)]
    for days, b in zip((3, 2, 1), backups, strict=True):
        assert all(c.ok for c in services.verify(b.id, actor="t", source="cli"))
        with services.catalog.tx() as db:
            db.execute("UPDATE backups SET created_at = ? WHERE id = ?", [iso(utcnow() - timedelta(days=days)), b.id])
    # WHEN the weekly check runs while the backup disk is unmounted (its empty mount point left)
    # and S3 times out
    (tmp_path / "backups").rename(tmp_path / "elsewhere")
    (tmp_path / "backups").mkdir()
    s3 = next(s for s in services.storages if s.name == "s3")

    def timed_out(_key: str):
        raise StorageError("S3 unreachable: read timed out")

    monkeypatch.setattr(s3, "open_reader", timed_out)
    report = integrity_job(rt)
    # THEN every copy is reported unreadable, with what to do, and nothing is recorded against any
    assert {f.kind for f in report.findings} == {"unreadable"} and len(report.findings) == 6, report.findings
    assert "/prod is not there (an unmounted disk?)" in report.findings[0].text + report.findings[1].text
    for b in backups:
        again = services.get_backup(b.id)
        assert again.verify_status == "ok" and {c.status for c in again.copies} == {"stored"}
    # AND once the disk is back, a backup and its prune keep the history the policy asks for
    (tmp_path / "backups").rmdir()
    (tmp_path / "elsewhere").rename(tmp_path / "backups")
    monkeypatch.undo()
    services.backup(actor="t", source="cli")
    [pruned] = services.prune(dry_run=False, actor="t", source="cli")
    assert pruned.deleted == [] and {b.id for b in backups} <= set(pruned.decision.keep)
