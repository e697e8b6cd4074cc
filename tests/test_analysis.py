"""Quota analysis: burn rate, weekly peaks, stagger, underspend, prune; all with a fixed clock."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmbudget.errors import ConfigError
from llmbudget.quota import analysis as an
from llmbudget.quota import prune, weekly
from llmbudget.quota.readings import QuotaReading, Window

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def rd(
    backend: str,
    at: datetime,
    *,
    u5: float | None = None,
    r5: datetime | None = None,
    u7: float | None = None,
    r7: datetime | None = None,
    status: str | None = "allowed",
    key_valid: bool | None = None,
) -> QuotaReading:
    windows = {}
    if u5 is not None or r5 is not None:
        windows["5h"] = Window(utilization=u5, reset=r5)
    if u7 is not None or r7 is not None:
        windows["7d"] = Window(utilization=u7, reset=r7)
    return QuotaReading(
        timestamp=at,
        backend=backend,
        provider="anthropic-unified",
        status=status,
        windows=windows,
        key_valid=key_valid,
    )


# ---------------------------------------------------------------------------- burn rate
def test_burn_rate_projects_exhaustion_before_reset() -> None:
    reset7 = NOW + 60 * H
    rs = [rd("team", NOW - 10 * H + i * H, u7=0.40 + 0.02 * i, r7=reset7) for i in range(11)]  # 40% -> 60%
    (row,) = an.burn_rates(rs, now=NOW, windows=("7d",))
    assert row.readings == 11
    assert row.utilization == pytest.approx(0.60)
    assert row.change == pytest.approx(0.20)
    assert row.per_hour == pytest.approx(0.02)
    # 40 points left at 2 points an hour: 20 hours after the last reading, well before the reset
    assert row.exhaustion == NOW + 20 * H
    assert row.exhausts_before_reset is True


def test_burn_rate_only_counts_the_current_cycle() -> None:
    old_reset, new_reset = NOW - 5 * H, NOW + 163 * H
    rs = [
        rd("a", NOW - 30 * H, u7=0.90, r7=old_reset),
        rd("a", NOW - 20 * H, u7=0.98, r7=old_reset),
        # the window reset: utilization starts again near zero with a new reset time
        rd("a", NOW - 4 * H, u7=0.01, r7=new_reset),
        rd("a", NOW, u7=0.05, r7=new_reset),
    ]
    (row,) = an.burn_rates(rs, now=NOW, windows=("7d",))
    assert row.readings == 2
    assert row.per_hour == pytest.approx(0.01)
    # 95 points left at 1 point an hour: runs out at +95 h, before the reset at +163 h
    assert row.exhaustion == NOW + 95 * H
    assert row.exhausts_before_reset is True


def test_burn_rate_resets_before_exhaustion_and_flat_usage() -> None:
    reset = NOW + 2 * H
    rs = [
        rd("slow", NOW - 2 * H, u5=0.10, r5=reset),
        rd("slow", NOW, u5=0.20, r5=reset),
        rd("idle", NOW - 2 * H, u5=0.30, r5=reset),
        rd("idle", NOW, u5=0.30, r5=reset),
        rd("single", NOW, u5=0.5, r5=reset),
    ]
    rows = {r.backend: r for r in an.burn_rates(rs, now=NOW, windows=("5h",))}
    assert rows["slow"].exhaustion == NOW + 16 * H and rows["slow"].exhausts_before_reset is False
    assert rows["idle"].per_hour == 0 and rows["idle"].exhaustion is None
    assert rows["idle"].exhausts_before_reset is False
    assert rows["single"].per_hour is None and rows["single"].exhausts_before_reset is None


def test_burn_rate_skips_a_cycle_that_is_over() -> None:
    rs = [rd("old", NOW - 9 * H, u5=0.2, r5=NOW - 5 * H), rd("old", NOW - 8 * H, u5=0.4, r5=NOW - 5 * H)]
    assert an.burn_rates(rs, now=NOW, windows=("5h",)) == []


def test_burn_rate_maxed_account_is_exhausted_now() -> None:
    (row,) = an.burn_rates([rd("x", NOW - H, u7=1.0, status="rejected")], now=NOW, windows=("7d",))
    assert row.exhaustion == NOW - H and row.exhausts_before_reset is True


# ---------------------------------------------------------------------------- weekly
def test_weekly_peak_average_and_exhaustion_events() -> None:
    mon = datetime(2026, 11, 16, 9, tzinfo=UTC)  # Monday of ISO week 47
    rs = [
        rd("a", mon, u7=0.20),
        rd("a", mon + 24 * H, u7=0.60),
        rd("a", mon + 48 * H, u7=1.0),
        rd("a", mon + 49 * H, u7=1.0, status="rejected"),
        rd("a", mon + 50 * H, u7=0.40),
        rd("a", mon + 72 * H, status="rejected"),
        rd("a", mon + 7 * 24 * H, u7=0.10),  # next week
        rd("b", mon, u7=0.50),
        # an API key without a 7d window: nothing to show, unless it was exhausted
        rd("key", mon, status="allowed"),
        rd("key", mon + 7 * 24 * H, status="rejected"),
    ]
    rows = {(r.backend, r.week): r for r in weekly.weekly(rs)}
    w47 = rows[("a", "2026-W47")]
    assert w47.readings == 6
    assert w47.peak == pytest.approx(1.0)
    assert w47.average == pytest.approx((0.2 + 0.6 + 1.0 + 1.0 + 0.4) / 5)
    # the two consecutive maxed readings are one event; the later rejection is another
    assert [(e.start, e.readings) for e in w47.exhaustions] == [(mon + 48 * H, 2), (mon + 72 * H, 1)]
    assert w47.exhaustions[0].reason == "7d at 100%"
    assert w47.exhaustions[1].reason == "rejected"
    assert rows[("a", "2026-W48")].peak == pytest.approx(0.10)
    assert rows[("a", "2026-W48")].exhaustions == []
    assert rows[("b", "2026-W47")].average == pytest.approx(0.5)
    assert ("key", "2026-W47") not in rows
    assert rows[("key", "2026-W48")].peak is None and len(rows[("key", "2026-W48")].exhaustions) == 1


def test_iso_week_at_year_boundary() -> None:
    assert weekly.iso_week(datetime(2027, 1, 1, tzinfo=UTC)) == "2026-W53"


# ---------------------------------------------------------------------------- stagger
def test_stagger_lists_resets_in_the_next_48h_soonest_first() -> None:
    rs = [
        rd("a", NOW - H, u5=0.3, r5=NOW + 3 * H, u7=0.5, r7=NOW + 100 * H),
        rd("b", NOW - 2 * H, u7=0.7, r7=NOW + 47 * H),
        rd("c", NOW - 9 * H, u5=0.9, r5=NOW - H),  # already reset: stale, not upcoming
        rd("c", NOW - 10 * H, u5=0.9, r5=NOW + H),
    ]  # older reading of c is ignored
    rows = an.stagger(rs, now=NOW)
    assert [(r.backend, r.window) for r in rows] == [("a", "5h"), ("b", "7d")]
    assert rows[0].in_seconds == 3 * 3600


# ---------------------------------------------------------------------------- underspend
@pytest.mark.parametrize(
    ("u5", "reset_in", "age", "status", "key_valid", "flagged"),
    [
        (0.55, 90, 10, "allowed", None, True),  # 45% unused, 1h30 left
        (0.60, 90, 10, "allowed", None, True),  # exactly 40% unused
        (0.61, 90, 10, "allowed", None, False),  # 39% unused
        (0.10, 130, 10, "allowed", None, False),  # more than 2 h left: still time to use it
        (0.10, -5, 10, "allowed", None, False),  # already reset: the reading is stale
        (0.10, 90, 60 * 7, "allowed", None, False),  # no reading for 7 h: not an active account
        (0.10, 90, 10, "rejected", None, False),
        (0.10, 90, 10, "allowed", False, False),
    ],
)
def test_underspend(
    u5: float, reset_in: int, age: int, status: str, key_valid: bool | None, flagged: bool
) -> None:
    r = rd(
        "seat",
        NOW - timedelta(minutes=age),
        u5=u5,
        r5=NOW + timedelta(minutes=reset_in),
        status=status,
        key_valid=key_valid,
    )
    rows = an.underspend([r], now=NOW)
    assert bool(rows) is flagged
    if flagged:
        assert rows[0].message.startswith(f"use it or lose it: {round((1 - u5) * 100)}% of seat's 5h window")
        assert rows[0].message.endswith("resets in 1h30m")


# ---------------------------------------------------------------------------- filters and config
def test_filter_provider_by_name_or_kind() -> None:
    a = rd("a", NOW)
    b = QuotaReading(timestamp=NOW, backend="b", provider="openai")
    assert an.filter_provider([a, b], "b") == [b]
    assert an.filter_provider([a, b], "anthropic-unified") == [a]
    assert an.filter_provider([a, b], None) == [a, b]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("quota:\n  retention_days: 0\n", 2, "greater than or equal to 1"),
        ("quota:\n  retention_days: -3\n", 2, "greater than or equal to 1"),
        ("quota:\n  retention_days: '30'\n", 2, "valid integer"),
        ("quota:\n  retention_days: 2.5\n", 2, "valid integer"),
        ("timezone: UTC\nquota:\n  retention_days: true\n", 3, "valid integer"),
        ("quota:\n  warn_at: 1.5\n", 2, "less than or equal to 1"),
        (
            "quota:\n  retention_days: 7\n  keep_days: 7\n",
            3,
            "unknown key; valid keys: retention_days, warn_at",
        ),
        ("quota: 30\n", 1, "valid dictionary"),
    ],
)
def test_quota_section_errors_name_file_line_and_key(text: str, line: int, fragment: str) -> None:
    from llmbudget.config import parse_config

    with pytest.raises(ConfigError) as e:
        parse_config(text, "llmbudget.yaml")
    msg = str(e.value)
    assert msg.startswith(f"llmbudget.yaml:{line}: quota") and fragment in msg, msg


def test_quota_section_defaults_and_values() -> None:
    from llmbudget.config import parse_config

    assert parse_config("", None)[0].quota.retention_days == prune.DEFAULT_RETENTION_DAYS == 30
    assert parse_config("quota:\n", "c.yaml")[0].quota.warn_at == 0.8
    q = parse_config("quota:\n  retention_days: 7\n  warn_at: 0.9\n", "c.yaml")[0].quota
    assert (q.retention_days, q.warn_at) == (7, 0.9)


# ---------------------------------------------------------------------------- prune (JSONL log part)
def _write_log(d: Path, day: str, n: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"readings-{day}.jsonl"
    ts = f"{day}T10:00:00Z"
    p.write_text("".join(json.dumps(rd("a", datetime.fromisoformat(ts)).to_dict()) + "\n" for _ in range(n)))
    return p


def test_prune_log_files_dry_run_then_archive(tmp_path: Path) -> None:
    logs, archive = tmp_path / "quota", tmp_path / "quota" / "archive"
    old = _write_log(logs, "2026-10-01", 3)
    edge = _write_log(logs, "2026-10-21", 2)  # the cutoff falls inside this day: kept
    new = _write_log(logs, "2026-11-19", 1)
    before = datetime(2026, 10, 21, 12, tzinfo=UTC)
    dry = prune.prune_readings(None, before=before, log_dir=logs, archive_dir=archive, now=NOW, dry_run=True)
    assert dry.log_files == [str(old)] and dry.log_readings == 3
    assert old.exists() and not archive.exists()
    res = prune.prune_readings(None, before=before, log_dir=logs, archive_dir=archive, now=NOW)
    assert res.log_readings == 3 and not old.exists() and edge.exists() and new.exists()
    with gzip.open(archive / "readings-2026-10-01.jsonl.gz", "rt") as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["backend"] == "a"


# ---------------------------------------------------------------------------- rotation
def test_rotation_ranks_by_headroom_and_puts_blocked_accounts_last() -> None:
    rs = [
        rd("busy", NOW - H, u5=0.70, r5=NOW + 2 * H, u7=0.50, r7=NOW + 50 * H),
        rd("fresh", NOW - H, u5=0.10, r5=NOW + 2 * H, u7=0.20, r7=NOW + 50 * H),
        rd("maxed", NOW - H, u5=1.0, r5=NOW + 2 * H, status="rejected"),
        rd("badkey", NOW - H, key_valid=False, status=None),
        rd("fresh", NOW - 30 * H, u5=0.99, r5=NOW - 25 * H),
    ]  # an older reading of fresh is ignored
    ranked = an.rotation(rs, now=NOW, accounts=["never-probed"])
    names = [r["backend"] for r in ranked]
    assert names[:2] == ["fresh", "busy"]
    assert names.index("never-probed") < names.index("maxed") < names.index("badkey")
    # weekly headroom (0.8) weighs three times the 5h window's (0.9)
    assert ranked[0]["headroom"] == pytest.approx(0.825) and ranked[0]["basis"] == "windows"
    assert [r["rank"] for r in ranked] == list(range(1, 6))


def test_prune_ledger_twice_in_one_second_keeps_both_archives(ledger_url: str, tmp_path: Path) -> None:
    from llmbudget.store import open_ledger

    archive = tmp_path / "archive"
    with open_ledger(ledger_url, audit=False) as ledger:
        for batch in range(2):
            ledger.record_reading(rd(f"acct-{batch}", NOW - 40 * 24 * H).to_dict())
            res = prune.prune_readings(
                ledger, before=NOW - 30 * 24 * H, log_dir=tmp_path / "none", archive_dir=archive, now=NOW
            )
            assert res.ledger_readings == 1
        assert ledger.readings() == []
    names = sorted(p.name for p in archive.iterdir())
    assert names == [
        "ledger-readings-20261120T120000Z-2.jsonl.gz",
        "ledger-readings-20261120T120000Z.jsonl.gz",
    ]
    backends = set()
    for p in archive.iterdir():
        with gzip.open(p, "rt") as fh:
            backends |= {json.loads(line)["backend"] for line in fh}
    assert backends == {"acct-0", "acct-1"}
