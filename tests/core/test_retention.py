"""Table-driven tests for GFS retention selection (bot.core.retention.select)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.config import RetentionPolicy
from bot.core.retention import Candidate, Decision, select

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    """'2026-11-30T02:00' read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def b(id: str, when: str, verified: bool = True, *tags: str) -> Candidate:
    return Candidate(id=id, created_at=at(when), verified=verified, tags=frozenset(tags))


def bad(id: str, when: str) -> Candidate:
    """A complete backup whose every copy was found corrupt or missing since."""
    return Candidate(id=id, created_at=at(when), verified=False, restorable=False)


def on(id: str, when: str, *destinations: str) -> Candidate:
    """A verified backup with intact copies on these destinations."""
    return Candidate(id=id, created_at=at(when), verified=True, destinations=frozenset(destinations))


def policy(
    daily: int = 0, weekly: int = 0, monthly: int = 0, min_verified: int = 0, hourly: int = 0
) -> RetentionPolicy:
    return RetentionPolicy(hourly=hourly, daily=daily, weekly=weekly, monthly=monthly, min_verified=min_verified)


@dataclass(frozen=True)
class Case:
    name: str
    backups: list[Candidate]
    policy: RetentionPolicy
    now: str
    keep: dict[str, list[str]]
    delete: list[str]
    tz: ZoneInfo = UTC_ZONE


# 30 nightly backups d01..d30 at 02:00 UTC in November 2026; 2026-11-30 is a Monday (W49).
NOVEMBER = [b(f"d{day:02d}", f"2026-11-{day:02d}T02:00") for day in range(1, 31)]

# Berlin springs forward on 2026-03-29 (02:00 CET -> 03:00 CEST, at 01:00 UTC).
SPRING = [
    b("a", "2026-03-28T22:30"),  # 23:30 CET on the 28th
    b("b", "2026-03-28T23:30"),  # 00:30 CET on the 29th, still the 28th in UTC
    b("c", "2026-03-29T00:30"),  # 01:30 CET on the 29th
    b("d", "2026-03-29T01:30"),  # 03:30 CEST on the 29th
    b("e", "2026-03-29T22:30"),  # 00:30 CEST on the 30th
]

# Berlin falls back on 2026-10-25 (03:00 CEST -> 02:00 CET, at 01:00 UTC): 02:30 happens twice.
AUTUMN = [
    b("p", "2026-10-24T22:30"),  # 00:30 CEST on the 25th
    b("f0", "2026-10-25T00:30"),  # 02:30 CEST, first pass
    b("f1", "2026-10-25T01:30"),  # 02:30 CET, second pass: same wall clock, later instant
    b("h", "2026-10-25T23:30"),  # 00:30 CET on the 26th
]

CASES = [
    Case("empty input", [], RetentionPolicy(), "2026-11-30T12:00", keep={}, delete=[]),
    Case(
        "30 nightly backups with the default 7/4/3 policy",
        NOVEMBER,
        RetentionPolicy(),
        "2026-11-30T12:00",
        keep={
            "d30": ["newest", "hourly 2026-11-30 02:00 UTC", "daily 2026-11-30", "weekly 2026-W49", "monthly 2026-11"],
            "d29": ["daily 2026-11-29", "weekly 2026-W48"],
            "d28": ["daily 2026-11-28"],
            "d27": ["daily 2026-11-27"],
            "d26": ["daily 2026-11-26"],
            "d25": ["daily 2026-11-25"],
            "d24": ["daily 2026-11-24"],
            "d22": ["weekly 2026-W47"],
            "d15": ["weekly 2026-W46"],
        },
        delete=[f"d{d:02d}" for d in (*range(1, 15), *range(16, 22), 23)],
    ),
    Case(
        "several backups a day: the newest of each day is kept",
        [
            b("1am", "2026-05-01T08:00"),
            b("1pm", "2026-05-01T20:00"),
            b("2am", "2026-05-02T08:00"),
            b("2pm", "2026-05-02T20:00"),
            b("3am", "2026-05-03T08:00"),
        ],
        policy(daily=2),
        "2026-05-03T12:00",
        keep={"3am": ["newest", "daily 2026-05-03"], "2pm": ["daily 2026-05-02"]},
        delete=["1am", "1pm", "2am"],
    ),
    Case(
        "DST spring forward in Berlin: days are Berlin days",
        SPRING,
        policy(daily=3),
        "2026-03-30T12:00",
        keep={
            "e": ["newest", "daily 2026-03-30"],
            "d": ["daily 2026-03-29"],
            "a": ["daily 2026-03-28"],
        },
        delete=["b", "c"],
        tz=BERLIN,
    ),
    Case(
        "same backups bucketed in UTC give different days",
        SPRING,
        policy(daily=3),
        "2026-03-30T12:00",
        keep={"e": ["newest", "daily 2026-03-29"], "b": ["daily 2026-03-28"]},
        delete=["a", "c", "d"],
    ),
    Case(
        "DST fall back in Berlin: the repeated hour is ordered by instant, not wall clock",
        AUTUMN,
        policy(daily=2),
        "2026-10-26T12:00",
        keep={"h": ["newest", "daily 2026-10-26"], "f1": ["daily 2026-10-25"]},
        delete=["p", "f0"],
        tz=BERLIN,
    ),
    Case(
        "ISO week crossing the year boundary: 2027-01-03 belongs to 2026-W53",
        [
            b("mon53", "2026-12-28T02:00"),
            b("sun53", "2027-01-03T02:00"),
            b("mon01", "2027-01-04T02:00"),
        ],
        policy(weekly=2),
        "2027-01-04T12:00",
        keep={"mon01": ["newest", "weekly 2027-W01"], "sun53": ["weekly 2026-W53"]},
        delete=["mon53"],
    ),
    Case(
        "new year's midnight in Berlin: month and ISO week follow the local calendar",
        [b("dec31", "2026-12-31T22:30"), b("jan01", "2026-12-31T23:30")],
        policy(weekly=1, monthly=2),
        "2027-01-01T12:00",
        keep={
            "jan01": ["newest", "weekly 2026-W53", "monthly 2027-01"],
            "dec31": ["monthly 2026-12"],
        },
        delete=[],
        tz=BERLIN,
    ),
    Case(
        "new year's midnight in UTC: both in December",
        [b("dec31", "2026-12-31T22:30"), b("jan01", "2026-12-31T23:30")],
        policy(weekly=1, monthly=2),
        "2027-01-01T12:00",
        keep={"jan01": ["newest", "weekly 2026-W53", "monthly 2026-12"]},
        delete=["dec31"],
    ),
    Case(
        "all-zero policy still keeps the newest backup",
        [b("x", "2026-01-01T02:00"), b("y", "2026-01-02T02:00"), b("z", "2026-01-03T02:00")],
        policy(),
        "2026-01-03T12:00",
        keep={"z": ["newest"]},
        delete=["x", "y"],
    ),
    Case(
        "min_verified keeps older verified backups when the newest are unverified",
        [
            b("v1", "2026-06-01T02:00"),
            b("v2", "2026-06-02T02:00"),
            b("v3", "2026-06-03T02:00"),
            b("u4", "2026-06-04T02:00", False),
            b("u5", "2026-06-05T02:00", False),
        ],
        policy(daily=2, min_verified=2),
        "2026-06-05T12:00",
        keep={
            "u5": ["newest", "daily 2026-06-05"],
            "u4": ["daily 2026-06-04"],
            "v3": ["min-verified"],
            "v2": ["min-verified"],
        },
        delete=["v1"],
    ),
    Case(
        "min_verified counts verified backups already kept",
        [
            b("v1", "2026-06-01T02:00"),
            b("v2", "2026-06-02T02:00"),
            b("u3", "2026-06-03T02:00", False),
            b("v4", "2026-06-04T02:00"),
        ],
        policy(daily=2, min_verified=2),
        "2026-06-04T12:00",
        keep={
            "v4": ["newest", "daily 2026-06-04"],
            "u3": ["daily 2026-06-03"],
            "v2": ["min-verified"],
        },
        delete=["v1"],
    ),
    Case(
        "min_verified larger than the verified backups there are keeps them all",
        [b("v1", "2026-06-01T02:00"), b("u2", "2026-06-02T02:00", False)],
        policy(min_verified=5),
        "2026-06-02T12:00",
        keep={"u2": ["newest"], "v1": ["min-verified"]},
        delete=[],
    ),
    Case(
        "pre-restore backups are kept for 7 days, then treated normally",
        [
            b("old-pre", "2026-06-01T02:00", True, "pre-restore"),  # 9 days old
            b("edge-pre", "2026-06-03T12:00", True, "pre-restore"),  # exactly 7 days old
            b("pre", "2026-06-08T09:00", False, "pre-restore"),  # 2 days old
            b("plain", "2026-06-09T02:00"),
            b("nightly", "2026-06-10T02:00"),
        ],
        policy(daily=1),
        "2026-06-10T12:00",
        keep={"nightly": ["newest", "daily 2026-06-10"], "pre": ["pre-restore"]},
        delete=["old-pre", "edge-pre", "plain"],
    ),
    Case(
        "a pre-restore backup also fills its day's bucket",
        [
            b("nightly", "2026-06-09T02:00"),
            b("pre", "2026-06-09T15:00", True, "pre-restore"),
            b("today", "2026-06-10T02:00"),
        ],
        policy(daily=2),
        "2026-06-10T12:00",
        keep={
            "today": ["newest", "daily 2026-06-10"],
            "pre": ["daily 2026-06-09", "pre-restore"],
        },
        delete=["nightly"],
    ),
    Case(
        "backups from the future (clock skew) are kept and stay out of the buckets",
        [
            b("yesterday", "2026-06-09T02:00"),
            b("today", "2026-06-10T02:00"),
            b("skewed", "2026-06-11T02:00", False),
        ],
        policy(daily=1),
        "2026-06-10T12:00",
        keep={"skewed": ["future"], "today": ["newest", "daily 2026-06-10"]},
        delete=["yesterday"],
    ),
    Case(
        "a backup with no intact copy fills no bucket: the good one of its day and month is kept",
        [
            b("jan31", "2026-01-31T02:00"),
            b("feb28", "2026-02-28T02:00"),
            bad("feb28-corrupt", "2026-02-28T14:00"),
            b("mar01", "2026-03-01T02:00"),
        ],
        policy(daily=1, monthly=3),
        "2026-03-01T12:00",
        keep={"mar01": ["newest", "daily 2026-03-01", "monthly 2026-03"], "feb28": ["monthly 2026-02"],
              "jan31": ["monthly 2026-01"]},
        delete=["feb28-corrupt"],
    ),
    Case(
        "a newest backup with no intact copy is not the newest restore point",
        [b("good", "2026-06-09T02:00"), bad("broken", "2026-06-10T02:00")],
        policy(),
        "2026-06-10T12:00",
        keep={"good": ["newest"]},
        delete=["broken"],
    ),
    Case(
        "a backup marked broken is kept when nothing restorable replaces it in its period",
        [b("d08", "2026-06-08T02:00"), bad("d09", "2026-06-09T02:00"), bad("d10", "2026-06-10T02:00")],
        policy(daily=3),
        "2026-06-10T12:00",
        # the marks may be wrong (a disk unmounted while the integrity check ran): nothing goes for them alone
        keep={"d10": ["daily 2026-06-10"], "d09": ["daily 2026-06-09"], "d08": ["newest", "daily 2026-06-08"]},
        delete=[],
    ),
    Case(
        "while one destination's uploads fail, its newest copy is kept whatever the buckets say",
        [
            on("with-s3-1", "2026-06-01T02:00", "local", "s3"),
            on("with-s3-2", "2026-06-02T02:00", "local", "s3"),
            on("local-only-1", "2026-06-03T02:00", "local"),
            on("local-only-2", "2026-06-04T02:00", "local"),
        ],
        policy(daily=1),
        "2026-06-04T12:00",
        keep={"local-only-2": ["newest", "daily 2026-06-04"], "with-s3-2": ["newest on s3"]},
        delete=["with-s3-1", "local-only-1"],
    ),
    Case(
        "a backup from the future does not count towards the verified minimum",
        [
            b("v1", "2026-06-08T02:00"),
            b("v2", "2026-06-09T02:00"),
            b("skewed", "2026-06-15T02:00"),
        ],
        policy(min_verified=2),
        "2026-06-10T12:00",
        keep={"skewed": ["future"], "v2": ["newest"], "v1": ["min-verified"]},
        delete=[],
    ),
    Case(
        "every 15 minutes: the newest of each hour of the last N hours is kept, older ones by day",
        [b(f"q{h:02d}{m:02d}", f"2026-06-10T{h:02d}:{m:02d}") for h in (7, 8, 9, 10) for m in (0, 15, 30, 45)
         if (h, m) <= (10, 30)],
        policy(hourly=3, daily=1),
        "2026-06-10T10:40",
        keep={"q1030": ["newest", "hourly 2026-06-10 10:00 UTC", "daily 2026-06-10"],
              "q0945": ["hourly 2026-06-10 09:00 UTC"], "q0845": ["hourly 2026-06-10 08:00 UTC"],
              "q0745": ["hourly 2026-06-10 07:00 UTC"]},  # 07:45 is within the last 3 hours at 10:40
        delete=["q0700", "q0715", "q0730", "q0800", "q0815", "q0830", "q0900", "q0915", "q0930",
                "q1000", "q1015"],
    ),
    Case(
        "the hourly window leaves a nightly schedule alone",
        [b("d1", "2026-06-08T02:00"), b("d2", "2026-06-09T02:00"), b("d3", "2026-06-10T02:00")],
        policy(hourly=24, daily=1),
        "2026-06-10T12:00",
        keep={"d3": ["newest", "hourly 2026-06-10 02:00 UTC", "daily 2026-06-10"]},
        delete=["d1", "d2"],
    ),
    Case(
        "the hour repeated when clocks go back is two hours",
        [b("cest", "2026-10-25T00:40"), b("cet", "2026-10-25T01:40")],  # 02:40 CEST, then 02:40 CET
        policy(hourly=6),
        "2026-10-25T02:00",
        keep={"cet": ["newest", "hourly 2026-10-25 02:00 CET"], "cest": ["hourly 2026-10-25 02:00 CEST"]},
        delete=[],
        tz=BERLIN,
    ),
    Case(
        "backups at the same instant are ordered by id",
        [b("x1", "2026-06-10T02:00"), b("x2", "2026-06-10T02:00")],
        policy(daily=1),
        "2026-06-10T12:00",
        keep={"x2": ["newest", "daily 2026-06-10"]},
        delete=["x1"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("order", ["given", "reversed"])
def test_select_keeps_and_deletes_as_the_policy_says(case: Case, order: str) -> None:
    # GIVEN the backups in either order (the result must not depend on it)
    backups = case.backups if order == "given" else list(reversed(case.backups))
    # WHEN selecting
    decision = select(backups, case.policy, case.tz, at(case.now))
    # THEN keep (id -> reasons, newest first) and delete (oldest first) are exactly as expected
    assert decision == Decision(keep=case.keep, delete=case.delete)
    assert list(decision.keep) == list(case.keep)


def test_every_backup_is_either_kept_or_deleted() -> None:
    decision = select(NOVEMBER, RetentionPolicy(), UTC_ZONE, at("2026-11-30T12:00"))
    assert sorted([*decision.keep, *decision.delete]) == sorted(c.id for c in NOVEMBER)
    assert not set(decision.keep) & set(decision.delete)


def test_keep_set_is_stable_over_a_year_of_nightly_backups() -> None:
    # GIVEN a year of nightly backups with the default policy
    start = at("2026-01-01T02:00")
    year = [Candidate(f"n{i:03d}", start + timedelta(days=i), True) for i in range(365)]
    # WHEN selecting on the last day
    decision = select(year, RetentionPolicy(), BERLIN, start + timedelta(days=364, hours=10))
    # THEN at most 7 + 4 + 3 backups survive, including the newest
    assert 7 <= len(decision.keep) <= 14
    assert "n364" in decision.keep


@pytest.mark.parametrize(
    "backups, now, message",
    [
        ([Candidate("n", datetime(2026, 1, 1), True)], at("2026-01-02T00:00"), "aware"),
        ([b("x", "2026-01-01T00:00")], datetime(2026, 1, 2), "aware"),
        ([b("x", "2026-01-01T00:00"), b("x", "2026-01-02T00:00")], at("2026-01-03T00:00"), "twice"),
    ],
    ids=["naive created_at", "naive now", "duplicate id"],
)
def test_select_refuses_ambiguous_input(
    backups: list[Candidate], now: datetime, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        select(backups, RetentionPolicy(), UTC_ZONE, now)
