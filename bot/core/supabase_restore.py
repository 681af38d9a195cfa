"""Restoring a Supabase backup as `postgres` (no superuser): the hooks core.restore runs for a
backup whose manifest says profile "supabase". Services passes them to every restore, so the CLI
and the Slack flow share them.

One pg_restore transaction does the work: the application's objects and data, the rows of the
platform's tables (auth, storage) parents first, the application's triggers on those tables after
the data, and the source's default privileges last. Two small steps sit outside it: the roles dump
(cluster-wide, only creates missing roles) and setting aside `postgres`'s default privileges
(supabase_acl), which is undone when pg_restore fails. Whatever needs the platform's superuser is
left out and listed in the report's notes with the exact SQL to run.

Modes: ``--to`` (a new project) restores everything above; ``--in-place`` (over the project)
re-creates the application but keeps the platform tables' live rows and the application's
triggers on them (postgres may neither empty those tables inside pg_restore's transaction nor drop
a trigger on a table it does not own); ``--into`` (a new database, where auth and storage do not
exist) restores every schema of the backup as plain schemas owned by the restoring role.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg import sql

from bot.core import supabase_acl
from bot.core.catalog import Backup
from bot.core.profiles import SUPABASE_RESERVED_ROLES
from bot.core.restore import LoadContext, RestoreRequest
from bot.core.supabase_target import TargetState, read_target
from bot.core.supabase_toc import SQL_EDITOR, Plan, plan_restore, split_script
from bot.core.toc import TocEntry
from bot.core.verify import Check, Report
from bot.errors import BackupbotError, RestoreError

TRIGGER_EXISTS_SQL = """
SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND t.tgname = %s
"""
POLICY_COUNT_SQL = """
SELECT count(*) FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


def restore_hooks(backup: Backup, dest_url: str, request: RestoreRequest | None = None) -> dict[str, Any]:
    """Extra keyword arguments for core.restore.restore for this backup's profile."""
    profile = backup.manifest.get("profile") or {}
    if profile.get("name") != "supabase":
        return {}
    mode = request.mode if request is not None else "to"
    hooks = SupabaseRestore(backup, mode)
    kwargs: dict[str, Any] = {
        "reserved_roles": SUPABASE_RESERVED_ROLES,
        "toc_filter": hooks.toc_filter,
        "around_load": hooks.around_load,
        "after_restore": hooks.after_restore,
        # Rows of the platform's tables must load parents first, against the archive's order;
        # pg_restore reorders data only in an archive it can seek in.
        "seekable_archive": mode == "to",
    }
    if mode == "into":
        # The platform's roles own auth and storage; a new database gets them owned by us.
        kwargs["extra_pg_restore_args"] = ["--no-owner"]
    return kwargs


class SupabaseRestore:
    """The hooks of one restore; they share the plan made from the archive and the destination."""

    def __init__(self, backup: Backup, mode: str) -> None:
        self.backup = backup
        self.mode = mode
        profile = backup.manifest.get("profile") or {}
        self.managed = tuple(profile.get("managed_schemas") or ("auth", "storage"))
        self.excluded: dict[str, str] = dict(profile.get("excluded_schemas") or {})
        self.plan = Plan()
        self.target: TargetState | None = None

    # -- toc_filter ---------------------------------------------------------------------------
    def toc_filter(self, entries: list[TocEntry], ctx: LoadContext) -> list[TocEntry]:
        with psycopg.connect(ctx.info.conninfo(), autocommit=True) as conn:
            self.target = read_target(conn, self.managed)
        self.plan = plan_restore(entries, self.target, mode=self.mode, managed=self.managed,
                                 reserved=SUPABASE_RESERVED_ROLES,
                                 extension_schemas=self.backup.manifest.get("extensions") or {})
        if self.plan.missing:
            raise RestoreError(
                f"{ctx.info.describe()} has no table {', '.join(self.plan.missing)}, which the backup holds "
                "rows for: the project's platform version differs from the source's (create the new "
                "project on the same or a newer version); nothing was restored")
        return self.plan.entries

    # -- around_load --------------------------------------------------------------------------
    def around_load(self, ctx: LoadContext) -> AbstractContextManager[object]:
        return self._around_load(ctx)

    @contextmanager
    def _around_load(self, ctx: LoadContext) -> Iterator[None]:
        if self.mode == "into":
            # A new database: the schemas the backup's extensions live in were excluded from the
            # dump. The database is dropped if the restore fails, so nothing needs undoing.
            with psycopg.connect(ctx.info.conninfo(), autocommit=True) as conn:
                for schema in sorted(self.plan.extension_schemas):
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            yield
            return
        # The schemas the restore creates objects in (public ...), not the platform's.
        schemas = ({e.schema for e in self.plan.entries} | {e.tag for e in self.plan.entries if e.desc == "SCHEMA"}) \
            - {"-"} - self.plan.provided
        with psycopg.connect(ctx.info.conninfo(), autocommit=True) as conn:
            aside = supabase_acl.set_aside(conn, self._our_roles(), schemas)
        try:
            yield
        except Exception as exc:
            raise self._undo(ctx, aside, exc) from exc
        except BaseException:
            self._put_back(ctx, aside)
            raise

    def _our_roles(self) -> list[str]:
        """The restoring role, plus the application's roles it is a member of (their default
        privileges are restored from the archive too)."""
        assert self.target is not None
        t = self.target
        return [t.current_user] + sorted(r for r in t.member_of - SUPABASE_RESERVED_ROLES
                                         if r != t.current_user and not r.startswith("pg_"))

    def _put_back(self, ctx: LoadContext, aside: supabase_acl.SetAside) -> str | None:
        """Undo set_aside; on failure, the message (with the statements to run) instead."""
        try:
            with psycopg.connect(ctx.info.conninfo(), autocommit=True) as conn:
                supabase_acl.put_back(conn, aside)
            return None
        except psycopg.Error as err:
            try:
                with psycopg.connect(ctx.info.conninfo(), autocommit=True) as conn:
                    todo = " ".join(s + ";" for s in supabase_acl.pending_statements(conn, aside))
            except psycopg.Error:
                todo = "(cannot connect to list them)"
            return f"the default privileges set aside for the restore could not be put back ({err}): run {todo}"

    def _undo(self, ctx: LoadContext, aside: supabase_acl.SetAside, exc: Exception) -> RestoreError:
        """pg_restore rolled its transaction back; put the default privileges back too, and say
        which archive entries failed by their schema-qualified names."""
        what = exc.message if isinstance(exc, BackupbotError) else f"{type(exc).__name__}: {exc}"
        by_id = {e.dump_id: e for e in self.plan.entries}
        failed = [by_id[int(n)] for n in re.findall(r"TOC entry (\d+)", what) if int(n) in by_id]
        # A failed COPY names only the table ("COPY failed for table "users"").
        for table in re.findall(r'COPY failed for table "((?:[^"]|"")+)"', what):
            failed += [e for e in self.plan.entries if e.desc == "TABLE DATA" and e.tag == table]
        where = f" Failed: {', '.join(dict.fromkeys(_describe(e) for e in failed))}." if failed else ""
        problem = self._put_back(ctx, aside)
        if problem:
            return RestoreError(f"{what}.{where} Nothing was restored (one transaction), but {problem}",
                                detail=getattr(exc, "detail", ""))
        return RestoreError(f"{what}.{where} Nothing was restored (one transaction): {ctx.info.describe()} "
                            "is as it was", detail=getattr(exc, "detail", ""))

    # -- after_restore ------------------------------------------------------------------------
    def after_restore(self, conn: psycopg.Connection[Any], report: Report, ctx: LoadContext) -> None:
        plan = self.plan
        if self.mode == "into":
            if plan.todo:
                report.checks.append(Check(None, "not restored into this scratch database",
                                           "; ".join(f"{_describe(t.entry)} ({t.why})" for t in plan.todo)))
        else:
            self._todo_notes(report, ctx)
        if plan.moved:
            missing = [e for e in plan.moved if not _trigger_exists(conn, e, self.target)]
            report.checks.append(Check(not missing, "application triggers on platform tables, created after the data",
                                       ", ".join(_describe(e) for e in (missing or plan.moved))
                                       + (" missing" if missing else "")))
        if plan.skipped:
            where = f"the definitions in {', '.join(sorted(plan.provided))}; " if plan.provided else ""
            report.checks.append(Check(None, "platform objects left to the project",
                                       f"{plan.skipped} archive entries ({where}extensions, event triggers, "
                                       "publications and default privileges the destination already has)"))
        if plan.kept_live:
            rows = [k[len("rows of "):] for k in plan.kept_live if k.startswith("rows of ")]
            kept = [k for k in plan.kept_live if not k.startswith("rows of ")]
            kept += [f"the live rows of {', '.join(rows)}"] if rows else []
            report.checks.append(Check(None, "kept as the destination has them", "; ".join(kept)))
            self._soften_live_rows(report)
        self._soften_policy_counts(conn, report)
        if "vault" in self.excluded and self.mode == "to":
            report.notes.append("vault secrets are not in the backup (postgres cannot read them): "
                                "re-create them in the new project (dashboard > Vault)")
        if self.excluded:
            report.checks.append(Check(None, "schemas not in the backup (see the manifest for why)",
                                       ", ".join(sorted(self.excluded))))

    def _todo_notes(self, report: Report, ctx: LoadContext) -> None:
        if not self.plan.todo:
            return
        try:
            statements = split_script(ctx.render([t.entry for t in self.plan.todo]))
        except BackupbotError as exc:  # the data is committed: a missing statement is not a failed restore
            statements = {}
            report.checks.append(Check(False, "statements for the notes", f"could not read them from the archive: {exc.message}"))
        for t in self.plan.todo:
            e = t.entry
            text = statements.get((e.desc, e.schema, e.tag)) or f"(the {e.desc} entry {e.tag})"
            report.notes.append(f"{t.why}; {SQL_EDITOR}: {text}")

    def _soften_live_rows(self, report: Report) -> None:
        """In-place keeps the platform tables' live rows: their counts are facts, not failures."""
        managed = tuple(f"rows {s}." for s in self.managed)
        for check in report.checks:
            if check.label.startswith(managed) and check.ok is False:
                check.ok, check.detail = None, f"{check.detail} (live rows kept)"
            if check.label == "sequence values" and check.ok is False and all(
                    name.split(".")[0] in self.managed for name in _differing(check.detail)):
                check.ok, check.detail = None, f"{check.detail} (platform sequences kept live)"

    def _soften_policy_counts(self, conn: psycopg.Connection[Any], report: Report) -> None:
        """Policies on platform tables that only their owner may create are in the notes: the
        policy check fails only if other tables differ."""
        pending: dict[str, int] = {}
        for t in self.plan.todo:
            if t.entry.desc == "POLICY":
                table = t.entry.tag.split(" ", 1)[0]
                pending[f"{t.entry.schema}.{table}"] = pending.get(f"{t.entry.schema}.{table}", 0) + 1
        if not pending:
            return
        wanted = {f"{t['schema']}.{t['name']}": t.get("policies", 0) for t in self.backup.manifest.get("tables", [])}
        for check in report.checks:
            if check.label != "policy counts per table" or check.ok is not False:
                continue
            still = []
            for name, want in wanted.items():
                schema, _, table = name.partition(".")
                row = conn.execute(POLICY_COUNT_SQL, [schema, table]).fetchone()
                if (row[0] if row else 0) + pending.get(name, 0) != want:
                    still.append(name)
            if not still:
                check.ok = True
                check.detail = (f"{check.detail.split(';')[0]}; "
                                + ", ".join(f"{n}: {k} to create by hand (see notes)" for n, k in pending.items()))


def _describe(e: TocEntry) -> str:
    if e.desc == "PUBLICATION TABLE":
        pub, _, table = e.tag.partition(" ")
        return f"publication {pub} membership of {e.schema}.{table}"
    return f"{e.desc} {e.schema}.{e.tag}" if e.schema != "-" else f"{e.desc} {e.tag}"


def _trigger_exists(conn: psycopg.Connection[Any], e: TocEntry, target: TargetState | None) -> bool:
    tables = target.tables_in(e.schema) if target else []
    table = next((t for t in sorted(tables, key=len, reverse=True) if e.tag.startswith(t + " ")), e.tag.split(" ")[0])
    return conn.execute(TRIGGER_EXISTS_SQL, [e.schema, table, e.tag[len(table) + 1:]]).fetchone() is not None


def _differing(detail: str) -> list[str]:
    _, _, names = detail.partition("differs on ")
    return [n.strip() for n in names.split(",") if n.strip()]
