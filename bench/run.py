"""Benchmark backupbot's backup and restore against the raw pg_dump limit and the seed pipeline.

    python bench/run.py [--size-mb 1024] [--rounds 3] [--keep]

Starts a throwaway PostgreSQL cluster, builds a CRM-shaped database (bench/make_db.py), then runs,
interleaved round by round so that cache warmth and background noise hit every contender alike:

* raw      ``pg_dump -Fc -Z0 --no-sync -f /dev/null``: what reading the database costs, the floor
* seed     ``pg_dump <url> | gzip > file.sql.gz``: the shell pipeline backupbot replaces
* backupbot ``python -m bot backup``
* restores ``gunzip -c file.sql.gz | psql -q <newdb>`` vs ``python -m bot restore <id> --into``

Before each measured run the server checkpoints and the kernel writes out dirty pages, so no
contender pays for the previous one's writeback; the two restores take turns going first.

For each it reports the median wall time, the ratio to the raw limit and to the seed, output
bytes and peak memory, and writes bench/out/results.json. Peak memory is measured two ways: the
sum of resident memory over the whole process tree, sampled from /proc every 50 ms (catches a
pipeline's processes together), and the largest single process as reported exactly by
``/usr/bin/time -f %M`` when it exists. The server's own memory is not included.

A contender that fails is reported with its error and the run goes on: backupbot's CLI may not
exist yet, and the baselines are still worth having.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path[:0] = [str(REPO), str(BENCH_DIR)]  # run as a script: make `bot` and `make_db` importable

import make_db  # noqa: E402

from bot.core.cluster import Cluster  # noqa: E402
from bot.core.pgtools import ConnInfo, find_bindir  # noqa: E402
from bot.core.redact import redact  # noqa: E402

GNU_TIME = Path("/usr/bin/time")
SAMPLE_EVERY_S = 0.05
DIRTY_QUIET_KB = 32 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
DB_NAME = "crm"

# The seed pipelines as a user would type them; arguments arrive as $1.. so nothing secret (and
# nothing needing quoting) is spliced into the script, and pipefail makes a failed pg_dump count.
SEED_BACKUP_SH = 'set -o pipefail; "$1" --dbname="$2" | gzip > "$3"'
SEED_RESTORE_SH = 'set -o pipefail; gunzip -c "$1" | "$2" -q --dbname="$3"'


# --- measuring one command --------------------------------------------------------------------


@dataclass
class Run:
    """One measured execution."""

    seconds: float
    returncode: int
    peak_tree_rss: int  # bytes, sampled sum over the process tree
    max_proc_rss: int | None  # bytes, exact, from /usr/bin/time
    stdout: str
    stderr_tail: str


def _proc_table() -> dict[int, int]:
    """pid -> parent pid for every process we can see."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we looked
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def _dirty_kb() -> int:
    """Dirty and under-writeback page cache, from /proc/meminfo (0 where there is none)."""
    total = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(("Dirty:", "Writeback:")):
                    total += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return total


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(root: int, include_root: bool) -> int:
    parents = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total = _rss(root) if include_root else 0
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        total += _rss(pid)
        todo.extend(children.get(pid, []))
    return total


def measure(argv: Sequence[str], env: Mapping[str, str], cwd: Path, scratch: Path) -> Run:
    """Run argv to completion, timing it and sampling its process tree's memory."""
    timed = GNU_TIME.exists() and os.access(GNU_TIME, os.X_OK)
    time_file = scratch / "maxrss.txt"
    out_file, err_file = scratch / "stdout.txt", scratch / "stderr.txt"
    # GNU time isolates ru_maxrss to this command's own tree (our RUSAGE_CHILDREN would mix in
    # every earlier child), and -o keeps its report out of the command's stderr.
    full = [str(GNU_TIME), "-f", "%M", "-o", str(time_file), *argv] if timed else list(argv)
    peak = 0
    with open(out_file, "wb") as out, open(err_file, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, env=dict(env), cwd=cwd)  # noqa: S603
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid, include_root=not timed))
            time.sleep(SAMPLE_EVERY_S)
        seconds = time.perf_counter() - start
    max_proc = None
    if timed:
        try:  # the last line: earlier ones are "Command exited with non-zero status N"
            max_proc = int(time_file.read_text().split()[-1]) * 1024
        except (OSError, IndexError, ValueError):
            max_proc = None
    stderr = err_file.read_bytes().decode("utf-8", "replace")
    return Run(
        seconds=seconds,
        returncode=proc.returncode,
        peak_tree_rss=peak,
        max_proc_rss=max_proc,
        stdout=out_file.read_bytes().decode("utf-8", "replace"),
        stderr_tail=redact("\n".join(stderr.strip().splitlines()[-15:])),
    )


# --- contenders -------------------------------------------------------------------------------


@dataclass
class Result:
    """Everything measured for one contender over all rounds."""

    name: str
    description: str
    seconds: list[float] = field(default_factory=list)
    output_bytes: list[int] = field(default_factory=list)
    peak_tree_rss: list[int] = field(default_factory=list)
    max_proc_rss: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    def record(self, run: Run, output_bytes: int | None) -> None:
        print(f"  {self.name:<13} {run.seconds:7.2f} s", file=sys.stderr)
        self.seconds.append(run.seconds)
        if output_bytes is not None:
            self.output_bytes.append(output_bytes)
        self.peak_tree_rss.append(run.peak_tree_rss)
        if run.max_proc_rss is not None:
            self.max_proc_rss.append(run.max_proc_rss)

    def fail(self, round_no: int, message: str) -> None:
        line = f"round {round_no}: {message}"
        self.errors.append(line)
        print(f"  ! {self.name} failed: {line}", file=sys.stderr)


def _dir_bytes(path: Path, exclude: Path | None = None) -> int:
    return sum(
        p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and (exclude is None or p != exclude)
    )


def plain_size(path: Path, db_bytes: int) -> int:
    """Uncompressed size of a .gz file: the trailer when it can be trusted, else by reading."""
    # The trailer stores the size modulo 4 GiB; a plain dump is smaller than the database
    # (indexes are only their definitions), so below 4 GiB of database the trailer is exact.
    if db_bytes < 4 * 1024**3:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return int(struct.unpack("<I", f.read(4))[0])
    total = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            total += len(chunk)
    return total


class Bench:
    """The cluster, the source database and the contenders' shared plumbing."""

    def __init__(self, cluster: Cluster, work: Path, keep: bool) -> None:
        self.cluster = cluster
        self.work = work
        self.keep = keep
        self.bindir = find_bindir()
        self.url = cluster.url(DB_NAME)
        self.info = ConnInfo.parse(self.url)
        self.last_bot: tuple[str, dict[str, str]] | None = None  # (backup id, env) for restore

    # Environments: our own PG* variables must not leak into the contenders, and the password
    # travels only in the environment, never on a command line.
    def pg_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = self.cluster.password
        return env

    def bot_env(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "BACKUP"))}
        env.update(
            DATABASE_URL=self.url,
            BACKUP_DIR=str(home / "backups"),
            BACKUPBOT_DB=str(home / "catalog.db"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        return env

    def conninfo(self, dbname: str) -> str:
        return self.info.with_db(dbname).safe_conninfo()

    def scratch(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def db_size(self, dbname: str) -> int | None:
        import psycopg

        try:
            with psycopg.connect(self.cluster.url(dbname)) as conn:
                row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
                return int(row[0]) if row else None
        except psycopg.Error:
            return None

    def drop_db(self, dbname: str) -> None:
        from psycopg import sql

        self.cluster.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            .format(sql.Identifier(dbname))
            .as_string()
        )

    def settle(self, deadline_s: float = 60) -> None:
        """Start every contender from the same quiet state: the previous contender's dirty pages
        written out and a checkpoint done, so that nobody pays for somebody else's writeback (a
        restore leaves hundreds of MB of dirty pages behind: 0.8 GB seen in /proc/meminfo)."""
        self.cluster.execute("CHECKPOINT")
        os.sync()
        deadline = time.monotonic() + deadline_s
        while _dirty_kb() > DIRTY_QUIET_KB and time.monotonic() < deadline:
            time.sleep(0.1)

    # -- the contenders; each records into its Result and never raises on a contender's failure

    def raw(self, res: Result, r: int) -> None:
        scratch = self.scratch(f"raw-{r}")
        # --no-sync: pg_dump fsyncs its output file, and fsync on /dev/null fails (EINVAL).
        dump = [str(self.bindir / "pg_dump"), "-Fc", "-Z0", "--no-sync", "-f", "/dev/null"]
        argv = [*dump, "--dbname", self.conninfo(DB_NAME)]
        self.settle()
        run = measure(argv, self.pg_env(), scratch, scratch)
        if run.returncode:
            return res.fail(r, f"exit {run.returncode}: {run.stderr_tail}")
        res.record(run, None)

    def seed_backup(self, res: Result, r: int) -> Path | None:
        scratch = self.scratch(f"seed-{r}")
        out = scratch / "file.sql.gz"
        argv = [
            "bash",
            "-c",
            SEED_BACKUP_SH,
            "seed",
            str(self.bindir / "pg_dump"),
            self.conninfo(DB_NAME),
            str(out),
        ]
        self.settle()
        run = measure(argv, self.pg_env(), scratch, scratch)
        if run.returncode:
            res.fail(r, f"exit {run.returncode}: {run.stderr_tail}")
            return None
        res.record(run, out.stat().st_size)
        return out

    def bot_backup(self, res: Result, r: int) -> None:
        home = self.scratch(f"bot-{r}")
        env = self.bot_env(home)
        # cwd is the scratch dir so that a developer's .env in the repository is not picked up.
        self.settle()
        run = measure([sys.executable, "-m", "bot", "backup"], env, home, home)
        lines = [ln.strip() for ln in run.stdout.splitlines() if ln.strip()]
        if run.returncode or not lines:
            return res.fail(r, f"exit {run.returncode}: {run.stderr_tail or run.stdout[-500:]}")
        backups = home / "backups"
        res.record(run, _dir_bytes(backups) if backups.exists() else None)
        self.last_bot = (lines[-1], env)

    def seed_restore(self, res: Result, r: int, dump: Path | None) -> None:
        if dump is None:
            return res.fail(r, "no seed dump from this round")
        target = f"restore_seed_{r}"
        self.drop_db(target)
        self.cluster.create_database(target)
        scratch = self.scratch(f"seed-restore-{r}")
        argv = [
            "bash",
            "-c",
            SEED_RESTORE_SH,
            "seed",
            str(dump),
            str(self.bindir / "psql"),
            self.conninfo(target),
        ]
        self.settle()
        run = measure(argv, self.pg_env(), scratch, scratch)
        # psql without ON_ERROR_STOP exits 0 after failed statements: count them as failures.
        errors = [ln for ln in run.stderr_tail.splitlines() if "ERROR" in ln]
        if run.returncode or errors:
            res.fail(r, f"exit {run.returncode}: {run.stderr_tail}")
        else:
            res.record(run, self.db_size(target))
        self._cleanup_restore(target)

    def bot_restore(self, res: Result, r: int, precreate: bool) -> None:
        if self.last_bot is None:
            return res.fail(r, "no backupbot backup to restore")
        backup_id, env = self.last_bot
        target = f"restore_bot_{r}"
        self.drop_db(target)
        if precreate:
            self.cluster.create_database(target)
        home = Path(env["BACKUP_DIR"]).parent
        scratch = self.scratch(f"bot-restore-{r}")
        self.settle()
        run = measure(
            [sys.executable, "-m", "bot", "restore", backup_id, "--into", target],
            env,
            home,
            scratch,
        )
        if run.returncode:
            res.fail(r, f"exit {run.returncode}: {run.stderr_tail or run.stdout[-500:]}")
        else:
            res.record(run, self.db_size(target))
        self._cleanup_restore(target)

    def _cleanup_restore(self, target: str) -> None:
        # Restored copies are big; keep them only for inspection with --keep.
        if not self.keep:
            self.drop_db(target)


# --- report -----------------------------------------------------------------------------------


def _mb(values: Sequence[int]) -> float | None:
    return round(max(values) / 1024 / 1024, 1) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def summarize(
    results: Mapping[str, Result], baselines: Mapping[str, tuple[str | None, str | None]]
) -> list[dict[str, object]]:
    rows = []
    for name, res in results.items():
        vs_raw, vs_seed = baselines[name]
        rows.append(
            {
                "name": name,
                "description": res.description,
                "runs": len(res.seconds),
                "median_s": round(res.median, 3) if res.median is not None else None,
                "ratio_vs_raw": _ratio(res.median, results[vs_raw].median) if vs_raw else None,
                "ratio_vs_seed": _ratio(res.median, results[vs_seed].median) if vs_seed else None,
                "output_bytes": int(statistics.median(res.output_bytes))
                if res.output_bytes
                else None,
                "peak_tree_rss_mb": _mb(res.peak_tree_rss),
                "max_proc_rss_mb": _mb(res.max_proc_rss),
                "seconds": [round(s, 3) for s in res.seconds],
                "errors": res.errors,
            }
        )
    return rows


def print_table(rows: Sequence[Mapping[str, object]]) -> None:
    def cell(v: object, fmt: str = "{}") -> str:
        return "-" if v is None else fmt.format(v)

    head = f"{'contender':<16} {'runs':>4} {'median s':>9} {'x raw':>6} {'x seed':>6} {'output bytes':>14} {'tree MB':>8} {'proc MB':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['name']:<16} {r['runs']:>4} {cell(r['median_s'], '{:.2f}'):>9} "
            f"{cell(r['ratio_vs_raw'], '{:.2f}'):>6} {cell(r['ratio_vs_seed'], '{:.2f}'):>6} "
            f"{cell(r['output_bytes'], '{:,}'):>14} {cell(r['peak_tree_rss_mb']):>8} "
            f"{cell(r['max_proc_rss_mb']):>8}"
        )
        for err in r["errors"]:  # type: ignore[attr-defined]
            print(f"    ! {str(err).splitlines()[0][:150]}")


def _version(path: Path) -> str:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False)  # noqa: S603
    return out.stdout.strip()


def report(
    args: argparse.Namespace,
    results: Mapping[str, Result],
    baselines: Mapping[str, tuple[str | None, str | None]],
    db_bytes: int,
    plain_bytes: int | None,
    bindir: Path,
    started: float,
) -> None:
    """Print the table and the compression summary; write the JSON file."""
    rows = summarize(results, baselines)
    print()
    print_table(rows)
    seed_bytes = results["seed"].output_bytes
    bot_bytes = results["backupbot"].output_bytes
    ratios = {
        "plain_dump_bytes": plain_bytes,
        "gzip_ratio": _ratio(plain_bytes, statistics.median(seed_bytes))
        if seed_bytes and plain_bytes
        else None,
        "backupbot_ratio": _ratio(plain_bytes, statistics.median(bot_bytes))
        if bot_bytes and plain_bytes
        else None,
    }
    print(
        f"\ndatabase {db_bytes / 1024 / 1024:.0f} MB; plain dump {_mb([plain_bytes]) if plain_bytes else '-'} MB; "
        f"compression vs plain dump: gzip {ratios['gzip_ratio'] or '-'}x, "
        f"backupbot {ratios['backupbot_ratio'] or '-'}x; "
        f"total {time.perf_counter() - started:.0f} s"
    )
    data = {
        "size_mb_requested": args.size_mb,
        "database_bytes": db_bytes,
        "rounds": args.rounds,
        **ratios,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "pg_dump": _version(bindir / "pg_dump"),
            "gnu_time": GNU_TIME.exists(),
        },
        "contenders": rows,
        "notes": "tree MB: sampled sum of RSS over the process tree; proc MB: largest single "
        "process (GNU time); server memory not included",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}")


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="database size (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contender (default 3)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the cluster, files and restored databases"
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="connections for building (default: CPUs)"
    )
    parser.add_argument(
        "--into-existing",
        action="store_true",
        help="create the database before `backupbot restore --into` (default: let it)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out" / "results.json")
    args = parser.parse_args(argv)

    cluster = Cluster(settings={"max_wal_size": "'4GB'", "checkpoint_timeout": "'30min'"})
    work = Path(tempfile.mkdtemp(prefix="backupbot-bench-"))
    started = time.perf_counter()
    try:
        cluster.start()
        bench = Bench(cluster, work, args.keep)
        cluster.create_database(DB_NAME)
        print(
            f"building a ~{args.size_mb} MB CRM database on {bench.info.describe()} ...",
            file=sys.stderr,
        )
        db_bytes = make_db.build(bench.url, args.size_mb, args.jobs)
        print(f"database size: {db_bytes / 1024 / 1024:.0f} MB", file=sys.stderr)

        results = {
            "raw": Result("raw", "pg_dump -Fc -Z0 --no-sync -f /dev/null"),
            "seed": Result("seed", "pg_dump | gzip > file.sql.gz"),
            "backupbot": Result("backupbot", "python -m bot backup"),
            "seed-restore": Result("seed-restore", "gunzip -c file.sql.gz | psql -q"),
            "bot-restore": Result("bot-restore", "python -m bot restore <id> --into"),
        }
        baselines: dict[str, tuple[str | None, str | None]] = {
            "raw": (None, None),
            "seed": ("raw", None),
            "backupbot": ("raw", "seed"),
            "seed-restore": (None, None),
            "bot-restore": (None, "seed-restore"),
        }
        plain_bytes: int | None = None
        for r in range(1, args.rounds + 1):
            print(f"round {r}/{args.rounds}", file=sys.stderr)
            bench.raw(results["raw"], r)
            dump = bench.seed_backup(results["seed"], r)
            if dump is not None:
                plain_bytes = plain_size(dump, db_bytes)
            bench.bot_backup(results["backupbot"], r)
            # Restores take turns going first: whatever one leaves behind (autovacuum, cache
            # state) falls on each contender alike.
            order = ["seed-restore", "bot-restore"] if r % 2 else ["bot-restore", "seed-restore"]
            for name in order:
                if name == "seed-restore":
                    bench.seed_restore(results[name], r, dump)
                else:
                    bench.bot_restore(results[name], r, args.into_existing)

        report(args, results, baselines, db_bytes, plain_bytes, bench.bindir, started)
    finally:
        if args.keep:
            # The password is the Cluster default; the URL is shown without it all the same.
            print(
                f"kept: cluster 127.0.0.1:{cluster.port} (user {cluster.superuser}), files {work}; "
                f"stop with: pg_ctl -D {cluster.datadir} -m immediate stop (as postgres)",
                file=sys.stderr,
            )
        else:
            cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
