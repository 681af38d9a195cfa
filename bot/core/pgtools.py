"""One wrapper that runs every pg_* tool: argument lists, no shell, secrets only in the
child's environment, accepted exit codes, and a typed error carrying stderr's tail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO

from bot.core.redact import redact, register_secret
from bot.errors import ConnectionFailed, ToolFailed, VersionMismatch

SUPABASE_TRANSACTION_POOLER_PORT = 6543


@lru_cache(maxsize=1)
def _default_bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and Path(out.stdout.strip(), "pg_dump").exists():
            return Path(out.stdout.strip())
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_dump").exists():
            return candidate
    found = shutil.which("pg_dump")
    if found:
        return Path(found).parent
    raise ToolFailed("pg_dump not found: install the PostgreSQL client tools or set PG_BINDIR")


def find_bindir(configured: Path | None = None) -> Path:
    if configured is not None:
        if not (configured / "pg_dump").exists():
            raise ToolFailed(f"pg_dump not found in PG_BINDIR={configured}")
        return configured
    return _default_bindir()


@dataclass(frozen=True)
class ConnInfo:
    """A parsed connection URL. ``safe`` is what may be shown or put on a command line."""

    params: dict[str, str]

    @classmethod
    def parse(cls, url: str) -> ConnInfo:
        from psycopg.conninfo import conninfo_to_dict

        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
        register_secret(params.get("password"))
        register_secret(params.get("sslpassword"))
        return cls(params)

    @property
    def host(self) -> str:
        return self.params.get("host", "localhost")

    @property
    def port(self) -> int:
        try:
            return int(self.params.get("port", "5432").split(",")[0])
        except ValueError:
            return 5432

    @property
    def dbname(self) -> str:
        return self.params.get("dbname", self.params.get("user", "postgres"))

    @property
    def user(self) -> str:
        return self.params.get("user", "postgres")

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    def with_db(self, dbname: str) -> ConnInfo:
        return ConnInfo({**self.params, "dbname": dbname})

    def with_user(self, user: str, password: str | None) -> ConnInfo:
        p = {**self.params, "user": user}
        p.pop("password", None)
        if password:
            p["password"] = password
        return ConnInfo(p)

    def conninfo(self) -> str:
        """Full conninfo for psycopg (contains the password: never show it)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(**self.params)

    def safe_conninfo(self) -> str:
        """Conninfo without the password, for the pg_* tools' --dbname."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(**{k: v for k, v in self.params.items() if k not in ("password", "sslpassword")})

    def describe(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}"

    def env(self) -> dict[str, str]:
        """The child's environment: PGPASSWORD lives only here. An sslpassword (a client key's
        passphrase) has no environment variable: it reaches the child through an in-memory
        service file (``pass_fds``), never a command line."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = os.environ.get("PGCONNECT_TIMEOUT", "10")
        env["PGAPPNAME"] = "backupbot"
        if self.password:
            env["PGPASSWORD"] = self.password
        if self.params.get("options"):  # for tools given only part of the conninfo
            env["PGOPTIONS"] = self.params["options"]
        if "sslpassword" in self.params:
            problem = sslpassword_problem(self.params)
            if problem:
                raise ConnectionFailed(problem)
            env["PGSERVICEFILE"], env["PGSERVICE"] = _service_file(self.params["sslpassword"]), SERVICE_NAME
        return env

    def pass_fds(self) -> tuple[int, ...]:
        """File descriptors the child needs open: the service file of ``env``, if any."""
        fd = _service_fds.get(self.params.get("sslpassword", ""))
        return (fd,) if fd is not None else ()


def sslpassword_problem(params: Mapping[str, object]) -> str | None:
    """Why the pg_* tools cannot be given this conninfo's sslpassword (through libpq's service
    file, see ``ConnInfo.env``), or None. Checked at start-up (bot.config) and before each tool."""
    if "sslpassword" not in params:
        return None
    value = str(params["sslpassword"] or "")
    if not value:  # libpq would leave the key's passphrase to OpenSSL, which asks a terminal
        return "the sslpassword in the connection URL is empty: give the client key's passphrase, or leave it out"
    if "service" in params:  # the URL's own service would be looked up in our file
        return ("a connection URL with both a service and an sslpassword cannot be given to the pg_* tools: "
                "put the passphrase in that service's entry instead")
    if "\n" in value or "\r" in value or value != value.rstrip():
        return "the sslpassword holds a line break or ends in whitespace, which the pg_* tools cannot be given"
    # libpq reads service-file lines into a fixed buffer: 1 KiB in 15, 256 bytes in older
    # versions; 200 bytes of passphrase fits every client the tools may come from.
    if len(value.encode()) > 200:
        return "the sslpassword is longer than 200 bytes, which the pg_* tools cannot be given"
    return None


SERVICE_NAME = "backupbot"
_service_fds: dict[str, int] = {}  # sslpassword -> memfd of a service file holding it
_service_lock = threading.Lock()


def _service_file(sslpassword: str) -> str:
    """The path, in a child given ``pass_fds``, of a pg_service.conf that holds the sslpassword.
    It lives in memory (memfd) for this process's life: nothing on disk, gone when we are."""
    if not hasattr(os, "memfd_create"):
        raise ConnectionFailed("an sslpassword can be given to the pg_* tools only on Linux (memfd)")
    with _service_lock:
        fd = _service_fds.get(sslpassword)
        if fd is None:
            fd = os.memfd_create("backupbot-pg-service", os.MFD_CLOEXEC)  # not inherited unless passed
            os.write(fd, f"[{SERVICE_NAME}]\nsslpassword={sslpassword}\n".encode())
            _service_fds[sslpassword] = fd
    return f"/proc/self/fd/{fd}"


def check_not_transaction_pooler(info: ConnInfo) -> None:
    if info.port == SUPABASE_TRANSACTION_POOLER_PORT or "pooler.supabase.com:6543" in info.host:
        raise ConnectionFailed(
            f"{info.describe()} is Supabase's transaction pooler (port 6543), which cannot run "
            "pg_dump or pg_restore: use the session pooler (port 5432 on the pooler host) or the "
            "direct connection (db.<project-ref>.supabase.co:5432)"
        )


PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031  # Linux fcntl; not exported by Python's fcntl module before 3.10 on every build


def widen_pipe(fd: int) -> None:
    """Give a pipe 1 MiB instead of 64 KiB: pg_dump runs ahead while we compress, and pg_restore
    reads without a context switch every 64 KiB (measured: the restore stream's own overhead
    went from 0.8 s to nothing per GB). Best effort: other systems keep their default."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", F_SETPIPE_SZ), PIPE_SIZE)
    except (OSError, ImportError, ValueError):
        pass


class Command:
    """Runs one pg_* binary from the configured bindir, in a session of its own: without a
    controlling terminal nothing (OpenSSL asking for a key's passphrase) can wait on a prompt."""

    def __init__(self, tool: str, bindir: Path | None = None, ok_codes: Iterable[int] = (0,)) -> None:
        self.tool = tool
        self.path = find_bindir(bindir) / tool
        self.ok_codes = frozenset(ok_codes)

    def argv(self, args: Sequence[str]) -> list[str]:
        return [str(self.path), *args]

    def run(self, args: Sequence[str], info: ConnInfo | None = None, *, input: bytes | None = None,
            timeout: float | None = None, pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[bytes]:
        env = info.env() if info else None  # first: it makes the descriptors pass_fds names
        proc = subprocess.run(  # noqa: S603 - argument list, no shell
            self.argv(args), input=input, capture_output=True, env=env, timeout=timeout, check=False,
            pass_fds=(*(info.pass_fds() if info else ()), *pass_fds), start_new_session=True,
        )
        if proc.returncode not in self.ok_codes:
            raise tool_error(self.tool, proc.returncode, proc.stderr.decode("utf-8", "replace"), info)
        return proc

    def popen(self, args: Sequence[str], info: ConnInfo | None = None, *, stdin: int | IO[bytes] | None = None,
              stdout: int | IO[bytes] | None = subprocess.PIPE, pass_fds: Sequence[int] = ()) -> RunningTool:
        env = info.env() if info else None  # first: it makes the descriptors pass_fds names
        proc = subprocess.Popen(  # noqa: S603 - argument list, no shell
            self.argv(args), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env,
            pass_fds=(*(info.pass_fds() if info else ()), *pass_fds), start_new_session=True,
        )
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                widen_pipe(pipe.fileno())
        return RunningTool(self.tool, proc, self.ok_codes, info)

    def version(self) -> tuple[int, str]:
        out = subprocess.run([str(self.path), "--version"], capture_output=True, text=True, check=False)  # noqa: S603
        text = out.stdout.strip()
        if out.returncode != 0:
            raise ToolFailed(f"{self.path} --version failed (exit status {out.returncode}): check PG_BINDIR")
        # "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": the number after the first ")"
        m = re.search(r"\)\s*(\d+)", text) or re.search(r"(\d+)", text)
        if not m:
            raise ToolFailed(f"cannot read the version of {self.tool}: {text!r}")
        return int(m.group(1)), text


class RunningTool:
    """A started pg_* process whose stderr is drained in the background (keeping its tail)."""

    def __init__(self, tool: str, proc: subprocess.Popen[bytes], ok_codes: frozenset[int], info: ConnInfo | None):
        self.tool = tool
        self.proc = proc
        self.ok_codes = ok_codes
        self.info = info
        self._tail: deque[str] = deque(maxlen=40)
        # pg_restore --verbose names each failing archive entry on a "from TOC entry" line and
        # announces every step; a long "Command was:" (a function body) can push them out of the
        # tail, so keep them apart.
        self.failed_entries: list[str] = []
        self.last_step = ""
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            raw = line.decode("utf-8", "replace").rstrip("\r\n")
            text = raw.rstrip()
            self._tail.append(text)
            m = _TOC_ENTRY.search(raw)
            if m and len(self.failed_entries) < 20:
                self.failed_entries.append(f"{m.group(2)} (TOC entry {m.group(1)})")
            step = _STEP.match(text)
            if step:
                self.last_step = step.group(1)

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._tail)

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def check(self) -> None:
        code = self.wait()
        if code not in self.ok_codes:
            raise tool_error(self.tool, code, self.stderr_tail, self.info)

    def check_restore(self) -> None:
        """pg_restore's exit status is never ignored: any error fails the restore."""
        code = self.wait()
        if code != 0:
            tail = self.stderr_tail
            errors = ([ln for ln in tail.splitlines() if ln.startswith("pg_restore: error:")]
                      or [ln for ln in tail.splitlines() if "error" in ln.lower()])
            summary = errors[-1] if errors else (tail.splitlines()[-1] if tail else f"exit status {code}")
            if code < 0:
                summary = f"killed by signal {-code}"
            summary = re.sub(r"^pg_restore:\s*(error:\s*)?", "", summary.strip())
            if self.failed_entries:
                where = f" at {', '.join(self.failed_entries)}"
            else:  # a failed COPY is not tied to its entry: say what pg_restore was doing
                where = f" while {self.last_step}" if self.last_step else ""
            raise ToolFailed(f"pg_restore failed{where}: {redact(summary)}", detail=tail[-4000:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.wait(10)
        except subprocess.TimeoutExpired:
            pass


# "pg_restore: from TOC entry 3590; 0 16494 TABLE DATA users supabase_auth_admin"
_TOC_ENTRY = re.compile(r"from TOC entry (\d+); \d+ \d+ (.+) \S*$")  # the last word: the owner
# pg_restore --verbose: 'creating TABLE "public.deals"', 'processing data for table "auth.users"'
_STEP = re.compile(r"^pg_restore: ((?:creating|dropping|processing data for table) .+)$")

_CONNECTION_MARKERS = (
    "could not connect", "connection refused", "password authentication failed",
    "no password supplied", "could not translate host name", "timeout expired",
    "connection to server", "does not exist", "no pg_hba.conf entry", "network is unreachable",
)


def tool_error(tool: str, code: int, stderr: str, info: ConnInfo | None) -> ToolFailed | ConnectionFailed:
    """Turn a failed run into one clear, redacted line (the full tail goes in ``detail``)."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    where = f" ({info.describe()})" if info else ""
    if code < 0:
        summary = f"{tool} was killed by signal {-code}"
    else:
        errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
        summary = (errors[0] if errors else (lines[-1] if lines else f"exit status {code}")).strip()
        summary = re.sub(rf"^{tool}:\s*(error:\s*)?", "", summary)
    lowered = stderr.lower()
    if info is not None and any(m in lowered for m in _CONNECTION_MARKERS):
        msg = connection_advice(summary, info)
        return ConnectionFailed(f"cannot connect to {info.describe()}: {msg}", detail=stderr[-4000:])
    return ToolFailed(f"{tool} failed{where}: {redact(summary)}", detail=stderr[-4000:])


def connection_advice(summary: str, info: ConnInfo) -> str:
    """Add advice for the failures users hit with Supabase URLs."""
    low = summary.lower()
    host = info.host
    if host.startswith("db.") and host.endswith(".supabase.co") and (
        "network is unreachable" in low or "could not translate host name" in low
        or "cannot assign requested address" in low or "no address associated" in low
    ):
        return (
            f"{summary}; the direct connection {host} is IPv6-only: on an IPv4-only network use the "
            "session pooler URL (Supabase dashboard > Connect > Session pooler, port 5432)"
        )
    return summary


def connect_error(exc: BaseException) -> str:
    """libpq's connection failure as one line: the cause first, then its hint (libpq puts the
    hint on a tab-indented line after it, one cause per address tried)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if lines:
        lines[0] = re.sub(r"^connection failed:\s*", "", lines[0])
    return redact("; ".join(lines)) if lines else type(exc).__name__


def server_version(info: ConnInfo) -> tuple[int, str]:
    """(major, full version string) of the server, or ConnectionFailed with a clear message."""
    import psycopg

    try:
        with psycopg.connect(info.conninfo(), connect_timeout=10, autocommit=True) as conn:
            num = conn.info.server_version
            row = conn.execute("SHOW server_version").fetchone()
            full = str(row[0]) if row else str(num)
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect to {info.describe()}: {connection_advice(connect_error(exc), info)}") from None
    return num // 10000, full


def check_tool_not_older(tool: Command, server_major: int, server_full: str) -> tuple[int, str]:
    major, text = tool.version()
    if major < server_major:
        raise VersionMismatch(
            f"{tool.tool} {major} is older than the server (PostgreSQL {server_full}); install the "
            f"PostgreSQL {server_major} client tools or set PG_BINDIR to their bin directory"
        )
    return major, text

