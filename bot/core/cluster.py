"""Throwaway PostgreSQL clusters started from the installed binaries (demo, tests, bench).

When running as root the cluster is created and run as the ``postgres`` OS user, because the
server refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bot.core.pgtools import find_bindir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres_user() -> dict[str, Any]:
    """subprocess kwargs that drop to the postgres OS user when we are root."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(pw.pw_gid)
        os.initgroups("postgres", pw.pw_gid)
        os.setuid(pw.pw_uid)

    return {"preexec_fn": demote}


@dataclass
class Cluster:
    """A running PostgreSQL server on 127.0.0.1 with password (scram) authentication over TCP."""

    superuser: str = "postgres"
    password: str = "clusterpw"
    port: int = 0
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="backupbot-pg-")))
    bindir: Path = field(default_factory=find_bindir)
    settings: dict[str, str] = field(default_factory=dict)
    started: bool = False

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        return self.base / "sock"

    def url(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        user = user or self.superuser
        pw = self.password if password is None and user == self.superuser else password
        auth = quote(user, safe="") + (":" + quote(pw, safe="") if pw else "")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> Cluster:
        if not self.port:
            self.port = free_port()
        kw = _as_postgres_user()
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self.sockdir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.sockdir, "postgres", "postgres")
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        subprocess.run(
            [
                str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser,
                f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ],
            check=True, capture_output=True, **kw,  # type: ignore[arg-type]
        )
        pwfile.unlink()
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.sockdir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "128MB",
            **self.settings,
        }
        with open(self.datadir / "postgresql.auto.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        subprocess.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.base / "log"),
             "-w", "-t", "60", "start"],
            check=True, capture_output=True, **kw,  # type: ignore[arg-type]
        )
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            subprocess.run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"],
                capture_output=True, **_as_postgres_user(),  # type: ignore[arg-type]
            )
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def execute(self, sql: str, dbname: str = "postgres", autocommit: bool = True) -> None:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=autocommit) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str, owner: str | None = None) -> str:
        from psycopg import sql

        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            stmt = sql.SQL("{} OWNER {}").format(stmt, sql.Identifier(owner))
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(stmt)
        return self.url(name)

    def wait_ready(self, deadline_s: float = 30) -> None:
        import psycopg

        end = time.monotonic() + deadline_s
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
