"""A client key protected by a passphrase (``sslpassword`` in the URL) works for every pg_* tool,
and the passphrase reaches them only through an in-memory service file: never a command line or
an environment variable."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bot.core.cluster import Cluster
from bot.core.pgtools import Command, ConnInfo, find_bindir
from bot.core.restore import RestoreRequest
from bot.errors import BackupbotError, ConfigError, ConnectionFailed
from tests.fixtures.pg import PASSWORD, fake_bindir, query, table_checksums

PASSPHRASE = "key-Pass phrase&42"  # a space and an ampersand: URL-quoted, verbatim in the file

# Records each call's arguments and whether the passphrase is anywhere in its environment or in
# the service file it was pointed at, then runs the real tool (the descriptor survives the exec).
RECORD = """#!/usr/bin/env python3
import os, sys
svc = os.environ.get("PGSERVICEFILE", "")
with open("@LOG@", "a") as log:
    in_env = any("@PASSPHRASE@" in v for v in os.environ.values())
    in_file = bool(svc) and "@PASSPHRASE@" in open(svc).read()
    log.write(repr((os.path.basename(sys.argv[0]), sys.argv[1:], svc, in_env, in_file)) + "\\n")
os.execv("@REAL@/" + os.path.basename(sys.argv[0]), sys.argv)
"""


def _cert(name: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2)).sign(key, hashes.SHA256()))


def _write(path: Path, data: bytes, owner_postgres: bool = False) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    if owner_postgres and os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    return path


@pytest.fixture(scope="module")
def ssl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    """A server that speaks TLS, and a client certificate whose key is encrypted with PASSPHRASE."""
    cluster = Cluster(password=PASSWORD)
    server_key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    _write(cluster.base / "server.crt", _cert("localhost", server_key).public_bytes(pem), owner_postgres=True)
    _write(cluster.base / "server.key", server_key.private_bytes(
        pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()), owner_postgres=True)
    cluster.settings = {"ssl": "on", "ssl_cert_file": f"'{cluster.base / 'server.crt'}'",
                        "ssl_key_file": f"'{cluster.base / 'server.key'}'"}
    client = tmp_path_factory.mktemp("client")
    client_key = ec.generate_private_key(ec.SECP256R1())
    _write(client / "client.crt", _cert("postgres", client_key).public_bytes(pem))
    _write(client / "client.key", client_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(PASSPHRASE.encode())))
    cluster.start()
    try:
        yield cluster, client
    finally:
        cluster.stop()


def _url(cluster: Cluster, client: Path, dbname: str, passphrase: str | None = PASSPHRASE) -> str:
    url = (f"postgresql://postgres:{quote(PASSWORD, safe='')}@127.0.0.1:{cluster.port}/{dbname}"
           f"?sslmode=require&sslcert={client / 'client.crt'}&sslkey={client / 'client.key'}")
    return url + (f"&sslpassword={quote(passphrase, safe='')}" if passphrase is not None else "")


def test_the_client_key_really_needs_its_passphrase(ssl_cluster):
    # GIVEN the encrypted client key, WHEN pg_dump connects without the passphrase
    cluster, client = ssl_cluster
    info = ConnInfo.parse(_url(cluster, client, "postgres", passphrase=None))
    # THEN it cannot load the key: what the tools would do without the service file
    with pytest.raises(BackupbotError) as err:
        Command("pg_dump", find_bindir()).run(["--schema-only", f"--dbname={info.safe_conninfo()}"], info)
    assert "private key" in err.value.message + err.value.detail, err.value.detail


def test_backup_and_parallel_restore_with_an_encrypted_client_key(ssl_cluster, make_services, tmp_path):
    cluster, client = ssl_cluster
    cluster.create_database("ssl_src")
    src = _url(cluster, client, "ssl_src")
    query(src, "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g; ALTER TABLE t ADD PRIMARY KEY (id); "
               "CREATE TABLE u (id int PRIMARY KEY REFERENCES t(id) DEFERRABLE)")
    assert query(src, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [(True,)]
    log = tmp_path / "calls.log"
    script = RECORD.replace("@LOG@", str(log)).replace("@PASSPHRASE@", PASSPHRASE)
    bindir = fake_bindir(tmp_path, {tool: script for tool in ("pg_dump", "pg_dumpall", "pg_restore")})
    # GIVEN a target whose URL carries the client key's passphrase
    services = make_services(src, PG_BINDIR=str(bindir), RESTORE_JOBS="2")
    # WHEN backing up (pg_dump, pg_dumpall) and restoring with two connections (pg_restore forks
    # workers that connect again later)
    backup = services.backup(actor="t", source="cli").backup
    outcome, _ = services.restore(RestoreRequest(backup.id, mode="into", into="ssl_copy"), actor="t", source="cli")
    # THEN both worked and the copy is identical
    assert outcome.report.ok, outcome.report.lines()
    assert table_checksums(_url(cluster, client, "ssl_copy")) == table_checksums(src)
    # AND every connecting tool found the passphrase in its service file, never in its arguments
    # or environment
    calls = [eval(line) for line in log.read_text().splitlines()]  # noqa: S307 - our own repr() lines
    connecting = [c for c in calls if any(a.startswith("--dbname=") for a in c[1])]
    assert {c[0] for c in connecting} == {"pg_dump", "pg_dumpall", "pg_restore"}, calls
    for tool, argv, service_file, in_env, in_file in connecting:
        assert PASSPHRASE not in " ".join(argv) and quote(PASSPHRASE, safe="") not in " ".join(argv)
        assert service_file.startswith("/proc/self/fd/") and in_file and not in_env, (tool, service_file)
    assert PASSPHRASE not in str(services.catalog.runs())


@pytest.mark.parametrize("passphrase, said", [
    ("", "is empty"),  # OpenSSL would ask a terminal for it
    ("ends in a space ", "ends in whitespace"),  # libpq's service-file reader cuts trailing space
    ("é" * 101, "longer than 200 bytes"),  # 101 characters, 202 bytes
])
def test_an_sslpassword_the_tools_cannot_be_given_is_refused_at_start_up(ssl_cluster, make_settings,
                                                                          passphrase, said):
    cluster, client = ssl_cluster
    with pytest.raises(ConfigError) as err:
        make_settings(_url(cluster, client, "postgres", passphrase=passphrase))
    assert "DATABASE_URL" in str(err.value) and said in str(err.value)
    assert passphrase.strip() == "" or passphrase.strip() not in str(err.value)


def test_the_longest_passphrase_the_tools_take_is_accepted(ssl_cluster, make_settings):
    cluster, client = ssl_cluster
    assert make_settings(_url(cluster, client, "postgres", passphrase="é" * 100)).targets


def test_a_url_with_its_own_service_and_an_sslpassword_is_refused_with_what_to_do(ssl_cluster, make_settings):
    # The URL's own service would be looked up in our file: said at start-up, readable after redaction
    cluster, client = ssl_cluster
    url = _url(cluster, client, "postgres") + "&service=mine"
    with pytest.raises(ConfigError) as err:
        make_settings(url)
    assert "both a service and an sslpassword cannot be given" in str(err.value), err.value
    with pytest.raises(ConnectionFailed) as err2:
        ConnInfo.parse(url).env()
    assert "put the passphrase in that service's entry" in err2.value.message
    assert PASSPHRASE not in str(err.value) + err2.value.message


def test_no_tool_can_wait_on_a_terminal_prompt(tmp_path):
    """Without a passphrase OpenSSL asks /dev/tty: run from a terminal, the tools still have none."""
    import pty
    import sys

    bindir = fake_bindir(tmp_path, {"pg_dump": "#!/bin/sh\n( : < /dev/tty ) 2>/dev/null && echo TTY || echo NONE\n"})
    code = ("from pathlib import Path; from bot.core.pgtools import Command; "
            f"print('tool saw', Command('pg_dump', Path({str(bindir)!r})).run(['--version']).stdout.decode().strip())")
    # GIVEN a process whose controlling terminal is a pseudo-terminal, as a CLI's is
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        os.execv(sys.executable, [sys.executable, "-c", code])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(fd)
    assert os.waitpid(pid, 0)[1] == 0, out
    # THEN the tool it starts cannot open that terminal
    assert "tool saw NONE" in out.decode(), out
