"""Build a CRM-shaped benchmark database of about a chosen size, generated server-side.

The data is meant to compress like a real CRM's, not like repeated strings: names and places are
syllable combinations, notes are pseudo-sentences drawn from a word list with a Zipf-like
(log-uniform rank) distribution, sprinkled with numbers, dates, amounts and e-mail addresses, and
there is jsonb metadata plus pgbench-like numeric tables. All rows are produced by
``INSERT ... SELECT`` over ``generate_series`` and ``random()``, which is far faster than sending
rows from Python. Each table is filled by a single connection after ``setseed``, so the content and
the physical row order (and therefore the dump) are the same on every run; tables are spread
over ``--jobs`` connections.

    DATABASE_URL=postgresql://... python bench/make_db.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg

# Roughly in frequency order: the position in this list is the word's Zipf rank.
WORDS = """
the to and a of we for in is on that they with it will be customer have call this i as at our
not their are about next meeting from he she can by an would if team need them new up please
follow or send price contract all week some has was but more renewal support issue any asked
discussed quote invoice account agreed should license out demo discount today also there when
users update order project again product one still needs so very what who interested wants
email sent back after budget tomorrow no price-list decision trial last month upgrade plan
proposal review get like time check before could onboarding integration report feature request
data access seats billing payment approved pending signed legal procurement manager director
cto cfo ceo head sales marketing operations finance it security compliance partner reseller
support-ticket escalation outage bug fix release version migration api dashboard export import
sso saml login password reset mobile app web server cloud hosting region europe germany
france spain italy uk usa canada q1 q2 q3 q4 quarter year annual monthly yearly terms
conditions sla uptime response hours business days working remote office onsite visit
workshop training webinar conference lunch coffee phone voicemail left message reached
unreachable busy travelling holiday vacation sick colleague replaced contact champion
decision-maker stakeholder sponsor user admin owner evaluating comparing competitor cheaper
expensive value roi case study reference customer-success health score churn risk expansion
upsell cross-sell pipeline forecast stage qualified lost won closed negotiation verbal
commitment purchase po number vat tax address shipping delivery hardware units devices
sensors gateway subscription tier basic standard professional enterprise premium plus addon
storage bandwidth limit quota overage credit refund cancel cancellation notice period
auto-renew reminder deadline friday monday tuesday wednesday thursday morning afternoon
evening end beginning mid early late soon asap urgent blocked waiting confirmed postponed
rescheduled cancelled moved agenda notes minutes summary action items owner due done open
because however although since while therefore meanwhile otherwise probably maybe definitely
likely unclear happy unhappy frustrated satisfied positive negative neutral feedback survey
nps complaint praise mentioned said told explained promised confirmed clarified suggested
recommended proposed offered accepted rejected declined considering planning expecting
hoping trying using testing rolling deploying configuring integrating connecting syncing
importing exporting reporting tracking monitoring alerting notifying scheduling invoicing
charging paying ordering shipping returning replacing repairing installing uninstalling
first second third last previous current future old new big small large several many few
most less fewer additional extra other another same different specific general main key
important critical minor major high low medium fast slow quick easy hard complex simple
clear good great bad better worse best worst ok fine sure right wrong full partial
complete incomplete ready prepared missing available unavailable responsible accountable
my your his her its us him me you
""".split()

# Syllables for names, streets, cities and company names; order is again a frequency rank.
SYLLABLES = """
an el ma ri na lu ka ter son ber lin to mi sa ra de la ne ko ta mar len ric ha jo ste phen
li da vi ro be sel gar ton fi ol mo ni ze ya bel dor wen thal ru ke mon quin sha dra ve pa
go in nor lo stan ham ford wick ley field brook mont ville burg berg heim stadt ko vic ez
""".split()

STREET_SUFFIXES = ["Street", "Road", "Avenue", "Lane", "straße", "weg", "Way", "Allee", "Platz"]
COMPANY_SUFFIXES = ["GmbH", "Inc", "Ltd", "AG", "LLC", "Group", "Solutions", "& Co", "SE", "BV"]
TLDS = ["com", "de", "io", "net", "co.uk", "fr", "nl", "eu"]
FREEMAIL = ["gmail.com", "outlook.com", "yahoo.com", "gmx.de", "web.de", "icloud.com", "proton.me"]
COUNTRIES = ["DE", "US", "GB", "FR", "NL", "AT", "CH", "ES", "IT", "SE", "PL", "CA", "DK", "BE"]
INDUSTRIES = [
    "Software",
    "Retail",
    "Manufacturing",
    "Logistics",
    "Healthcare",
    "Finance",
    "Education",
    "Energy",
    "Media",
    "Construction",
    "Hospitality",
    "Agriculture",
    "Telecom",
    "Automotive",
]
STATUSES = ["active", "lead", "prospect", "churned", "inactive", "trial"]
STAGES = ["qualification", "discovery", "proposal", "negotiation", "closed_won", "closed_lost"]
KINDS = ["note", "email", "call", "meeting", "task"]
SOURCES = ["web", "referral", "event", "outbound", "partner", "ads", "import"]
CURRENCIES = ["EUR", "USD", "GBP", "CHF"]
EMPTY_DB_BYTES = 7_600_000

SCHEMA = """
DROP TABLE IF EXISTS activities, emails, deals, customers, companies,
    pgbench_history, pgbench_accounts, pgbench_tellers, pgbench_branches CASCADE;
CREATE TABLE companies (
    id integer NOT NULL, name text NOT NULL, domain text NOT NULL, industry text,
    country char(2), city text, employees integer, annual_revenue numeric(14,2),
    created_at timestamptz NOT NULL);
CREATE TABLE customers (
    id integer NOT NULL, company_id integer, first_name text NOT NULL, last_name text NOT NULL,
    email text NOT NULL, phone text, street text, postal_code text, city text, country char(2),
    status text NOT NULL, lifetime_value numeric(12,2), created_at timestamptz NOT NULL,
    metadata jsonb);
CREATE TABLE deals (
    id integer NOT NULL, customer_id integer NOT NULL, title text NOT NULL, stage text NOT NULL,
    amount numeric(12,2), currency char(3), probability smallint, created_at timestamptz NOT NULL,
    closed_at date);
CREATE TABLE activities (
    id bigint NOT NULL, customer_id integer NOT NULL, author_id integer NOT NULL,
    kind text NOT NULL, subject text NOT NULL, body text NOT NULL,
    created_at timestamptz NOT NULL, due_at timestamptz, metadata jsonb);
CREATE TABLE emails (
    id bigint NOT NULL, customer_id integer NOT NULL, direction text NOT NULL,
    message_id text NOT NULL, from_addr text NOT NULL, to_addr text NOT NULL,
    subject text NOT NULL, body text NOT NULL, sent_at timestamptz NOT NULL);
CREATE TABLE pgbench_branches (bid integer NOT NULL, bbalance integer, filler char(88));
CREATE TABLE pgbench_tellers (tid integer NOT NULL, bid integer, tbalance integer, filler char(84));
CREATE TABLE pgbench_accounts (aid integer NOT NULL, bid integer, abalance integer, filler char(84));
CREATE TABLE pgbench_history (
    tid integer, bid integer, aid integer, delta integer, mtime timestamp, filler char(22));
"""

# Constraints and indexes come after the load: building them once is much faster than
# maintaining them row by row, and a dump restores them the same way.
INDEXES = [
    "ALTER TABLE companies ADD PRIMARY KEY (id)",
    "ALTER TABLE customers ADD PRIMARY KEY (id)",
    "ALTER TABLE deals ADD PRIMARY KEY (id)",
    "ALTER TABLE activities ADD PRIMARY KEY (id)",
    "ALTER TABLE emails ADD PRIMARY KEY (id)",
    "ALTER TABLE pgbench_branches ADD PRIMARY KEY (bid)",
    "ALTER TABLE pgbench_tellers ADD PRIMARY KEY (tid)",
    "ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid)",
    "CREATE INDEX customers_email_idx ON customers (email)",
    "CREATE INDEX activities_customer_idx ON activities (customer_id, created_at)",
    "ALTER TABLE customers ADD FOREIGN KEY (company_id) REFERENCES companies (id)",
    "ALTER TABLE deals ADD FOREIGN KEY (customer_id) REFERENCES customers (id)",
    "ALTER TABLE activities ADD FOREIGN KEY (customer_id) REFERENCES customers (id)",
    "ALTER TABLE emails ADD FOREIGN KEY (customer_id) REFERENCES customers (id)",
]

# Zipf-ish pick from a 1-based array: exp(U * ln(n+1)) is log-uniform on [1, n+1), so rank k
# has probability ln((k+1)/k) ~ 1/k. Every call site names its own array parameter.
_ZIPF = "(%({a})s::text[])[floor(exp(random() * ln(cardinality(%({a})s::text[]) + 1)))::int]"
_UNIFORM = "(%({a})s::text[])[1 + floor(random() * cardinality(%({a})s::text[]))::int]"


def zipf(array: str) -> str:
    return _ZIPF.format(a=array)


def uniform(array: str) -> str:
    return _UNIFORM.format(a=array)


def _name(syllables: str) -> str:
    # Two or three syllables, common ones far more often: names repeat like real names do.
    return (
        f"initcap({zipf(syllables)} || {zipf(syllables)} || "
        f"CASE WHEN random() < 0.3 THEN {zipf(syllables)} ELSE '' END)"
    )


def _sentences(min_words: int, spread: int) -> str:
    """SQL for a pseudo-natural text of min_words..min_words+spread tokens."""
    token = f"""
        CASE
            WHEN r < 0.020 THEN (floor(random() * 1000))::int::text
            WHEN r < 0.026 THEN to_char(date '2019-01-01' + floor(random() * 2500)::int, 'YYYY-MM-DD')
            WHEN r < 0.030 THEN to_char(random() * 50000, 'FM99999.00') || ' ' || {uniform("cur")}
            WHEN r < 0.033 THEN lower({zipf("syl")} || {zipf("syl")}) || '@' || {uniform("free")}
            WHEN r < 0.040 THEN initcap({zipf("syl")} || {zipf("syl")})
            ELSE {zipf("words")}
        END
        || CASE WHEN random() < 0.07 THEN '.' WHEN random() < 0.05 THEN ',' ELSE '' END"""
    return f"""
        (SELECT initcap(left(t, 1)) || substr(t, 2) FROM (
            SELECT string_agg(tok, ' ') AS t FROM (
                SELECT {token} AS tok
                FROM (SELECT random() AS r
                      FROM generate_series(1, {min_words} + floor(random() * {spread})::int + 0 * g))
                     AS rnd
            ) AS toks
        ) AS txt)"""


@dataclass(frozen=True)
class Table:
    """How to fill one table: rows per size unit, bytes per row (measured), and the INSERT."""

    name: str
    bytes_per_row: float  # heap + TOAST + its indexes, measured on PG 15 at 100 MB
    share: float  # fraction of the requested size this table should take
    insert: str  # uses %(lo)s/%(hi)s for the id range and the arrays below
    chunk_rows: int


def _tables() -> list[Table]:
    ts = "timestamptz '2019-01-01 00:00+00' + random() * interval '2500 days'"
    return [
        Table(
            "companies",
            134,
            0.01,
            f"""
            INSERT INTO companies
            SELECT g, {_name("syl")} || ' ' || {zipf("csuf")},
                   lower({zipf("syl")} || {zipf("syl")} || {zipf("syl")}) || '.' || {zipf("tld")},
                   {zipf("ind")}, {zipf("cty")}, {_name("syl")},
                   floor(exp(random() * 10))::int, round((exp(random() * 18))::numeric, 2), {ts}
            FROM generate_series(%(lo)s::int, %(hi)s::int) AS g""",
            50_000,
        ),
        Table(
            "customers",
            361,
            0.14,
            f"""
            INSERT INTO customers
            SELECT g, 1 + floor(random() * %(n_companies)s)::int, f, l,
                   lower(f) || '.' || lower(l)
                       || CASE WHEN random() < 0.4 THEN floor(random() * 100)::int::text ELSE '' END
                       || '@' || CASE WHEN random() < 0.6 THEN lower(l) || '.' || {zipf("tld")}
                                      ELSE {uniform("free")} END,
                   '+' || (10 + floor(random() * 89))::int || ' ' || (100 + floor(random() * 899))::int
                       || ' ' || lpad(floor(random() * 10000000)::int::text, 7, '0'),
                   (1 + floor(random() * 250))::int || ' ' || {_name("syl")} || ' ' || {zipf("street")},
                   lpad(floor(random() * 100000)::int::text, 5, '0'), {_name("syl")}, {zipf("cty")},
                   {zipf("status")}, round((random() * random() * 100000)::numeric, 2), {ts},
                   jsonb_build_object(
                       'source', {zipf("src")},
                       'score', floor(random() * 100)::int,
                       'newsletter', random() < 0.3,
                       'tags', jsonb_build_array({zipf("words")}, {zipf("words")}),
                       'last_login', to_char({ts}, 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
            FROM (SELECT g, {_name("syl")} AS f, {_name("syl")} AS l
                  FROM generate_series(%(lo)s::int, %(hi)s::int) AS g) AS people""",
            50_000,
        ),
        Table(
            "deals",
            122,
            0.04,
            f"""
            INSERT INTO deals
            SELECT g, 1 + floor(random() * %(n_customers)s)::int,
                   initcap({zipf("words")}) || ' ' || {zipf("words")} || ' ' || {zipf("words")},
                   {zipf("stage")}, round((exp(random() * 12))::numeric, 2), {zipf("cur")},
                   floor(random() * 101)::int, {ts},
                   CASE WHEN random() < 0.5 THEN date '2019-01-01' + floor(random() * 2500)::int END
            FROM generate_series(%(lo)s::int, %(hi)s::int) AS g""",
            100_000,
        ),
        Table(
            "activities",
            670,
            0.30,
            f"""
            INSERT INTO activities
            SELECT g, 1 + floor(random() * %(n_customers)s)::int, 1 + floor(random() * 60)::int,
                   {zipf("kind")}, {_sentences(3, 6)}, {_sentences(8, 140)}, {ts},
                   CASE WHEN random() < 0.3 THEN {ts} END,
                   jsonb_build_object(
                       'channel', {zipf("src")},
                       'duration_s', floor(random() * 3600)::int,
                       'sentiment', round(random()::numeric * 2 - 1, 3),
                       'opened', random() < 0.5)
            FROM generate_series(%(lo)s::int, %(hi)s::int) AS g""",
            20_000,
        ),
        # A second text table (not a split of the first) so both cores generate text while the
        # physical row order of every table stays deterministic (one inserter per table).
        Table(
            "emails",
            808,
            0.25,
            f"""
            INSERT INTO emails
            SELECT g, 1 + floor(random() * %(n_customers)s)::int, d,
                   '<' || md5(random()::text) || '@' || dom || '>',
                   CASE WHEN d = 'in' THEN a ELSE 'sales@' || dom END,
                   CASE WHEN d = 'in' THEN 'sales@' || dom ELSE a END,
                   CASE WHEN random() < 0.4 THEN 'Re: ' ELSE '' END || {_sentences(2, 7)},
                   {_sentences(15, 200)}, {ts}
            FROM (SELECT g, CASE WHEN random() < 0.45 THEN 'in' ELSE 'out' END AS d,
                         lower({zipf("syl")} || {zipf("syl")}) || '.' || {zipf("tld")} AS dom,
                         lower({zipf("syl")} || {zipf("syl")} || '.' || {zipf("syl")} || {zipf("syl")})
                             || '@' || {uniform("free")} AS a
                  FROM generate_series(%(lo)s::int, %(hi)s::int) AS g) AS m""",
            20_000,
        ),
        Table(
            "pgbench_accounts",
            157,
            0.18,
            """
            INSERT INTO pgbench_accounts
            SELECT g, 1 + (g - 1) / 100000, floor((random() - 0.5) * 20000)::int, ''
            FROM generate_series(%(lo)s::int, %(hi)s::int) AS g""",
            500_000,
        ),
        Table(
            "pgbench_history",
            53,
            0.08,
            """
            INSERT INTO pgbench_history
            SELECT 1 + floor(random() * 100)::int, 1 + floor(random() * 10)::int,
                   1 + floor(random() * 1000000)::int, floor((random() - 0.5) * 10000)::int,
                   timestamp '2026-01-01' + g * interval '73 ms', NULL
            FROM generate_series(%(lo)s::int, %(hi)s::int) AS g""",
            500_000,
        ),
    ]


def _arrays() -> dict[str, list[str]]:
    return {
        "words": WORDS,
        "syl": SYLLABLES,
        "street": STREET_SUFFIXES,
        "csuf": COMPANY_SUFFIXES,
        "tld": TLDS,
        "free": FREEMAIL,
        "cty": COUNTRIES,
        "ind": INDUSTRIES,
        "status": STATUSES,
        "stage": STAGES,
        "kind": KINDS,
        "src": SOURCES,
        "cur": CURRENCIES,
    }


def plan(size_mb: int) -> dict[str, int]:
    """Rows per table for a database of about size_mb (deterministic: no measuring)."""
    # An empty database already takes about 7.5 MB (catalogs), which the tables need not fill.
    target = max(size_mb * 1024 * 1024 - EMPTY_DB_BYTES, 1024 * 1024)
    rows = {t.name: max(10, int(target * t.share / t.bytes_per_row)) for t in _tables()}
    return rows


def _fill(url: str, table: Table, rows: int, params: dict[str, object], seed: float) -> float:
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        # One seed per table on its own connection: content does not depend on scheduling.
        conn.execute("SELECT setseed(%s)", (seed,))
        for lo in range(1, rows + 1, table.chunk_rows):
            hi = min(rows, lo + table.chunk_rows - 1)
            conn.execute(table.insert, {**params, "lo": lo, "hi": hi})  # type: ignore[arg-type]
    return time.perf_counter() - start


def build(url: str, size_mb: int = 1024, jobs: int | None = None, log: bool = True) -> int:
    """Create and fill the tables at url; return pg_database_size in bytes."""
    jobs = jobs or os.cpu_count() or 2
    rows = plan(size_mb)
    params: dict[str, object] = {
        **_arrays(),
        "n_companies": rows["companies"],
        "n_customers": rows["customers"],
    }
    tables = _tables()
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
        conn.execute("INSERT INTO pgbench_branches SELECT b, 0, '' FROM generate_series(1, 10) b")
        conn.execute(
            "INSERT INTO pgbench_tellers SELECT t, 1 + (t - 1) / 10, 0, '' FROM generate_series(1, 100) t"
        )
    # Longest first, so the big text table starts at once and the small ones fill the gaps.
    order = sorted(tables, key=lambda t: rows[t.name] * t.bytes_per_row, reverse=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            t.name: pool.submit(_fill, url, t, rows[t.name], params, (i + 1) / 10)
            for i, t in enumerate(order)
        }
        for name, fut in futures.items():
            seconds = fut.result()
            if log:
                print(f"  {name:<18} {rows[name]:>10,} rows  {seconds:6.1f} s", file=sys.stderr)
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in INDEXES:
            conn.execute(stmt)  # type: ignore[arg-type]
        conn.execute("VACUUM (ANALYZE)")
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    size = int(row[0]) if row else 0
    if log:
        print(f"  built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="approximate database size")
    parser.add_argument(
        "--url", default=os.environ.get("DATABASE_URL"), help="default: $DATABASE_URL"
    )
    parser.add_argument("--jobs", type=int, default=None, help="connections (default: CPU count)")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give --url or set DATABASE_URL")
    size = build(args.url, args.size_mb, args.jobs)
    print(f"pg_database_size: {size} bytes ({size / 1024 / 1024:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
