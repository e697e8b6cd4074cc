"""Severity, rotation ranking, the compact summary (reuse vs probe) and the quota JSON API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from quota_fakes import FakeProviders, fake_providers

from llmbudget.cli import main
from llmbudget.errors import ValidationError
from llmbudget.quota.readings import Limit, QuotaReading, Window
from llmbudget.quota.readings_log import store_reading
from llmbudget.quota.rotation import rank_accounts, recommendation
from llmbudget.quota.severity import Severity, assess, overall
from llmbudget.quota.summary import countdown, parse_max_age
from llmbudget.store import open_ledger

NOW = datetime(2025, 7, 22, 12, 0, tzinfo=UTC)


def rd(name: str = "a", **kw: object) -> QuotaReading:
    return QuotaReading(timestamp=kw.pop("timestamp", NOW), backend=name, provider="anthropic-unified", **kw)  # type: ignore[arg-type]


def win(util: float, hours: float = 2) -> Window:
    return Window(util, NOW + timedelta(hours=hours))


# ------------------------------------------------------------------ severity


@pytest.mark.parametrize(
    ("reading", "severity", "fragment"),
    [
        (None, Severity.UNKNOWN, "no data"),
        (rd(reason="timed out after 10s"), Severity.UNKNOWN, "timed out after 10s"),
        (rd(status="allowed", windows={"5h": win(0.2)}), Severity.OK, None),
        (rd(status="allowed_warning"), Severity.WARNING, "allowed_warning"),
        (rd(windows={"7d": win(0.8)}), Severity.WARNING, "7d window at 80%"),
        (rd(windows={"7d": win(0.79)}), Severity.OK, None),
        (rd(windows={"5h": win(1.0)}), Severity.CRITICAL, "5h window maxed"),
        (rd(status="rejected", windows={"5h": win(0.5)}), Severity.CRITICAL, "rejected"),
        (rd(key_valid=False, http_status=401), Severity.CRITICAL, "invalid key (HTTP 401)"),
        (rd(limits={"tokens": Limit(1000, 0)}), Severity.CRITICAL, "tokens remaining 0"),
        (rd(limits={"tokens": Limit(1000, 150)}), Severity.WARNING, "tokens at 85%"),
        (rd(limits={"requests": Limit(unlimited=True)}), Severity.OK, None),
        (rd(credit_usd=Decimal(0), limit_usd=Decimal(10)), Severity.CRITICAL, "out of credit"),
        (rd(credit_usd=Decimal(1), limit_usd=Decimal(10)), Severity.WARNING, "credit at 90%"),
        (rd(violations=[{"quota_id": "PerDay"}], http_status=429), Severity.CRITICAL, "PerDay"),
        (rd(status="throttled"), Severity.WARNING, "unrecognized status"),
        (rd(windows={"overage": Window(None, None, "rejected")}, status="allowed"), Severity.OK, None),
    ],
)
def test_assess_table(reading: QuotaReading | None, severity: Severity, fragment: str | None) -> None:
    a = assess(reading)
    assert a.severity is severity, a.reasons
    if fragment:
        assert any(fragment in r for r in a.reasons), a.reasons


def test_a_window_past_its_reset_no_longer_counts() -> None:
    r = rd(windows={"5h": Window(1.0, NOW - timedelta(minutes=1))}, status="allowed")
    assert assess(r).severity is Severity.CRITICAL
    assert assess(r, now=NOW).severity is Severity.OK


def test_invalid_key_is_the_blocker_over_maxed() -> None:
    a = assess(rd(key_valid=False, windows={"5h": win(1.0)}))
    assert a.blocker == "invalid_key"


def test_overall_line() -> None:
    sev = [
        Severity.OK,
        Severity.CRITICAL,
        Severity.UNKNOWN,
        Severity.OK,
        Severity.OK,
        Severity.UNKNOWN,
        Severity.UNKNOWN,
    ]
    assert overall(sev) == "Overall: 1 CRITICAL, 3 OK, 3 UNKNOWN"
    assert overall([]) == "Overall: no accounts"


# ------------------------------------------------------------------ rotation


def test_rank_by_headroom_critical_last() -> None:
    readings = {
        "busy": rd("busy", status="allowed", windows={"5h": win(0.7), "7d": win(0.3, 50)}),
        "idle": rd("idle", status="allowed", windows={"5h": win(0.1), "7d": win(0.2, 50)}),
        "warn": rd("warn", status="allowed_warning", windows={"5h": win(0.2)}),
        "dead": rd("dead", key_valid=False, http_status=401),
        "maxed": rd("maxed", status="allowed", windows={"5h": win(1.0)}),
        "rejected": rd("rejected", status="rejected", windows={"7d": win(0.99, 50)}),
        "silent": None,
    }
    ranked = rank_accounts(readings, NOW)
    assert [r.backend for r in ranked] == ["idle", "busy", "warn", "silent", "maxed", "rejected", "dead"]
    assert [r.rank for r in ranked] == list(range(1, 8))
    # weekly headroom 0.8 counts three times the 5h window's 0.9; the 7d window is the more used
    assert ranked[0].headroom == pytest.approx(0.75 * 0.8 + 0.25 * 0.9) and ranked[0].binding == "7d"
    assert ranked[0].basis == "windows" and ranked[-1].basis is None
    assert recommendation(ranked) == (["idle"], ["maxed", "rejected", "dead"])


def test_rank_ties_prefer_the_sooner_reset() -> None:
    ranked = rank_accounts(
        [rd("late", windows={"5h": win(0.4, 4)}), rd("soon", windows={"5h": win(0.4, 1)})], NOW
    )
    assert [r.backend for r in ranked] == ["soon", "late"]


def test_stale_maxed_window_ranks_as_free_again() -> None:
    stale = rd("stale", windows={"5h": Window(1.0, NOW - timedelta(minutes=5))}, status="allowed")
    ranked = rank_accounts([stale, rd("half", windows={"5h": win(0.5)})], NOW)
    assert ranked[0].backend == "stale" and ranked[0].headroom == 1.0


def minute(limit: int, remaining: int, seconds: float = 40) -> Limit:
    return Limit(limit, remaining, NOW + timedelta(seconds=seconds))


def test_a_per_minute_bucket_never_outranks_a_subscription_window() -> None:
    """The case that motivated the rule: xAI's per-minute token bucket 99.95% free against a Max seat
    whose weekly window is half used. The bucket refills in seconds; the seat's quota is paid and
    lost at its reset."""
    xai = QuotaReading(
        timestamp=NOW,
        backend="grok",
        provider="xai",
        key_valid=True,
        limits={"tokens": minute(2_000_000, 1_999_000, 360)},
    )
    seat = rd("max", status="allowed", windows={"5h": win(0.1), "7d": win(0.5, 72)})
    ranked = rank_accounts([xai, seat], NOW)
    assert [(r.backend, r.basis) for r in ranked] == [("max", "windows"), ("grok", "per-minute")]
    assert ranked[1].headroom == pytest.approx(0.9995)


def test_the_weekly_window_counts_more_than_the_5h_one() -> None:
    # fresh 5h window but a weekly one 70% used, against a busy 5h window with most of the week left
    week_used = rd("week-used", windows={"5h": win(0.0), "7d": win(0.7, 50)})
    hour_busy = rd("hour-busy", windows={"5h": win(0.6), "7d": win(0.1, 50)})
    ranked = rank_accounts([week_used, hour_busy], NOW)
    assert [r.backend for r in ranked] == ["hour-busy", "week-used"]
    assert ranked[0].headroom == pytest.approx(0.75 * 0.9 + 0.25 * 0.4)
    assert ranked[0].binding == "5h" and ranked[1].binding == "7d"


def test_subscription_windows_then_metered_then_per_minute_then_none() -> None:
    credit = QuotaReading(
        timestamp=NOW, backend="or", provider="openrouter", credit_usd=Decimal(19), limit_usd=Decimal(20)
    )
    daily = QuotaReading(
        timestamp=NOW,
        backend="gpt-daily",
        provider="openai",
        limits={"tokens": minute(1000, 100 + 800, 6 * 3600)},
    )
    per_min = QuotaReading(timestamp=NOW, backend="grok", provider="xai", limits={"tokens": minute(100, 100)})
    bare = QuotaReading(timestamp=NOW, backend="gem", provider="gemini", status="allowed", key_valid=True)
    seat = rd("seat", status="allowed", windows={"5h": win(0.7), "7d": win(0.75, 50)})
    ranked = rank_accounts([bare, per_min, daily, credit, seat], NOW)
    assert [r.backend for r in ranked] == ["seat", "or", "gpt-daily", "grok", "gem"]
    assert [r.basis for r in ranked] == ["windows", "metered", "metered", "per-minute", "none"]
    assert ranked[2].headroom == pytest.approx(0.9) and ranked[-1].headroom is None


def test_a_nearly_full_per_minute_bucket_does_not_demote_but_a_weekly_warning_does() -> None:
    # 85% of a per-minute bucket used: WARNING on display, refilled in 40 s, so it keeps its place
    busy_minute = QuotaReading(
        timestamp=NOW,
        backend="a-busy-minute",
        provider="anthropic-unified",
        status="allowed",
        windows={"5h": win(0.2), "7d": win(0.3, 50)},
        limits={"requests": minute(100, 15)},
    )
    calm = rd("b-calm", status="allowed", windows={"5h": win(0.3), "7d": win(0.4, 50)})
    week_warn = rd("c-week-warn", status="allowed", windows={"5h": win(0.0), "7d": win(0.85, 50)})
    metered = QuotaReading(
        timestamp=NOW, backend="d-credit", provider="openrouter", credit_usd=Decimal(5), limit_usd=Decimal(10)
    )
    ranked = rank_accounts([week_warn, calm, busy_minute, metered], NOW)
    assert ranked[0].backend == "a-busy-minute" and ranked[0].severity is Severity.WARNING
    # a weekly window at 85% yields to a paid account with headroom
    assert [r.backend for r in ranked] == ["a-busy-minute", "b-calm", "d-credit", "c-week-warn"]


def test_window_length_from_its_name() -> None:
    from llmbudget.quota.rotation import window_length

    assert window_length("5h") == timedelta(hours=5)
    assert window_length("7d_oi") == timedelta(days=7)
    assert window_length("7d") == timedelta(days=7) and window_length("30m") == timedelta(minutes=30)
    assert window_length("overage") is None and window_length("5hours") is None


def test_countdown_and_max_age() -> None:
    assert countdown(NOW + timedelta(hours=2, minutes=13), NOW) == "2h13m"
    assert countdown(NOW + timedelta(days=3, hours=4, minutes=1), NOW) == "3d4h"
    assert countdown(NOW - timedelta(seconds=1), NOW) == "now"
    assert parse_max_age("20m") == timedelta(minutes=20) and parse_max_age("1h30m") == timedelta(minutes=90)
    assert parse_max_age("5") == timedelta(minutes=5)
    with pytest.raises(ValidationError, match="max_age"):
        parse_max_age("soon")


# ------------------------------------------------------------------ summary against fake providers


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    with fake_providers() as f:
        yield f


@pytest.fixture
def cfg_db(fake: FakeProviders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    monkeypatch.setenv("FAKE_KEY", "sk-test-123456789")
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text(
        "providers:\n"
        f"  - {{name: max-1, kind: anthropic-unified, base_url: '{fake.url('unified-ok')}', api_key_env: FAKE_KEY}}\n"
        f"  - {{name: max-2, kind: anthropic-unified, base_url: '{fake.url('unified-rejected')}', api_key_env: FAKE_KEY}}\n"
        f"  - {{name: grok, kind: xai, base_url: '{fake.url('xai-minus1')}', api_key_env: FAKE_KEY}}\n"
    )
    return cfg, f"sqlite:///{tmp_path / 'l.db'}"


def test_summary_probes_then_reuses(
    fake: FakeProviders, cfg_db: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = cfg_db
    before = fake.hits("unified-ok")
    assert main(["summary", "--config", str(cfg), "--db", db]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    # grok's per-minute token bucket is almost untouched, but it refills within minutes and says nothing
    # about how much work the key has left; max-1's subscription windows (half the week left) go first
    assert lines[-1] == "→ Current recommendation: use max-1 | avoid max-2"
    assert any(line.startswith("✓ max-1") and "5h 42%" in line and "7d 50%" in line for line in lines)
    assert any(line.startswith("✗ max-2") and "5h 100%" in line for line in lines)
    assert any(line.startswith("✓ grok") for line in lines)
    assert fake.hits("unified-ok") == before + 1
    # second run inside --max-age: no new probe, same block
    assert main(["summary", "--json", "--config", str(cfg), "--db", db]) == 0
    data = json.loads(capsys.readouterr().out)
    assert fake.hits("unified-ok") == before + 1
    assert sorted(data["reused"]) == ["grok", "max-1", "max-2"] and data["probed"] == []
    assert data["use"] == ["max-1"] and data["avoid"] == ["max-2"]
    assert [a["backend"] for a in data["accounts"]] == ["max-1", "grok", "max-2"]
    assert [a["basis"] for a in data["accounts"]] == ["windows", "per-minute", None]
    assert [a["mark"] for a in data["accounts"]][-1] == "✗"


def test_summary_probes_only_stale_accounts(
    fake: FakeProviders, cfg_db: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = cfg_db
    ledger = open_ledger(db)
    now = datetime.now(UTC)
    try:
        store_reading(
            ledger,
            QuotaReading(
                timestamp=now - timedelta(minutes=5),
                backend="max-1",
                provider="anthropic-unified",
                source="piggyback",
                status="allowed",
                windows={"5h": Window(0.05, now + timedelta(hours=1))},
            ),
        )
        store_reading(
            ledger,
            QuotaReading(
                timestamp=now - timedelta(hours=2), backend="grok", provider="xai", status="allowed"
            ),
        )
        # a backend seen only through the proxy joins the summary while its reading is fresh
        store_reading(
            ledger,
            QuotaReading(
                timestamp=now - timedelta(minutes=1),
                backend="proxy-claude",
                provider="anthropic-unified",
                source="piggyback",
                status="allowed",
                windows={"5h": Window(0.6, now + timedelta(hours=3))},
            ),
        )
    finally:
        ledger.close()
    hits = fake.hits("unified-ok"), fake.hits("xai-minus1"), fake.hits("unified-rejected")
    assert main(["summary", "--json", "--max-age", "10m", "--config", str(cfg), "--db", db]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(data["probed"]) == ["grok", "max-2"]
    assert sorted(data["reused"]) == ["max-1", "proxy-claude"]
    assert (fake.hits("unified-ok"), fake.hits("xai-minus1"), fake.hits("unified-rejected")) == (
        hits[0],
        hits[1] + 1,
        hits[2] + 1,
    )
    by = {a["backend"]: a for a in data["accounts"]}
    assert by["max-1"]["source"] == "piggyback" and by["max-1"]["headroom"] == pytest.approx(0.95)
    assert by["proxy-claude"]["headroom"] == pytest.approx(0.4)
    assert by["max-1"]["rank"] < by["proxy-claude"]["rank"] < by["grok"]["rank"] < by["max-2"]["rank"]


def test_summary_no_probe_bad_max_age(cfg_db: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, db = cfg_db
    assert main(["summary", "--no-probe", "--config", str(cfg), "--db", db]) == 0
    out = capsys.readouterr().out
    assert "? max-1" in out and "→ Current recommendation: use none | avoid none" in out
    assert main(["summary", "--max-age", "later", "--config", str(cfg), "--db", db]) == 1
    assert "max_age" in capsys.readouterr().err


def test_summary_without_providers_or_fresh_readings_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "none.yaml"
    cfg.write_text("timezone: UTC\n")
    db = f"sqlite:///{tmp_path / 'l.db'}"
    assert main(["summary", "--config", str(cfg), "--db", db]) == 1
    err = capsys.readouterr().err
    assert "no providers configured and no quota reading younger than 20m" in err
    # a fresh reading taken from real traffic is enough: the block shows it
    ledger = open_ledger(db)
    try:
        store_reading(
            ledger,
            QuotaReading(
                timestamp=datetime.now(UTC),
                backend="proxy-claude",
                provider="anthropic-unified",
                source="piggyback",
                status="allowed",
                windows={"5h": Window(0.25, None)},
            ),
        )
    finally:
        ledger.close()
    assert main(["summary", "--config", str(cfg), "--db", db]) == 0
    assert capsys.readouterr().out.strip().endswith("use proxy-claude | avoid none")


# ------------------------------------------------------------------ HTTP API


def test_quota_api(fake: FakeProviders, cfg_db: tuple[Path, str]) -> None:
    from starlette.testclient import TestClient

    from llmbudget.app import build_app
    from llmbudget.services import Services

    cfg, db = cfg_db
    services = Services.create(config_path=str(cfg), db_url=db)
    try:
        with TestClient(build_app(services), base_url="http://localhost") as client:
            empty = client.get("/api/quota").json()
            assert empty["backends"] == []
            r = client.get("/api/quota/summary?max_age=20m")
            assert r.status_code == 200, r.text
            s = r.json()
            assert s["recommendation"] == "→ Current recommendation: use max-1 | avoid max-2"
            assert s["text"].endswith(s["recommendation"])
            # probes go out on the server's one session: a second round opens none
            again = client.get("/api/quota/summary?max_age=0s").json()
            assert sorted(again["probed"]) == ["grok", "max-1", "max-2"]
            assert services.probe_session is not None and services.probe_session.opened == 1
            latest = client.get("/api/quota").json()
            by = {b["backend"]: b for b in latest["backends"]}
            assert by["max-2"]["severity"] == "CRITICAL" and by["max-1"]["mark"] == "✓"
            assert by["max-1"]["reading"]["windows"]["7d"]["utilization"] == pytest.approx(0.5)
            assert latest["overall"] == "Overall: 1 CRITICAL, 2 OK"
            bad = client.get("/api/quota/summary?probe=maybe")
            assert bad.status_code == 400 and "probe" in bad.text
            assert client.get("/api/quota?x=1").status_code == 400
    finally:
        services.close()


def test_summary_csv_rows_are_the_ranked_accounts(
    cfg_db: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import csv
    import io

    cfg, db = cfg_db
    assert main(["summary", "--csv", "--config", str(cfg), "--db", db]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["backend"] for r in rows] == ["max-1", "grok", "max-2"]
    assert rows[0]["mark"] == "✓" and "5h 42%" in rows[0]["line"]


def test_a_credit_limit_under_a_cent_is_shown_as_it_is() -> None:
    from llmbudget.quota.summary import describe

    tiny = QuotaReading(
        timestamp=NOW,
        backend="or",
        provider="openrouter",
        credit_usd=Decimal("0.0004"),
        limit_usd=Decimal("0.001"),
    )
    (ranked,) = rank_accounts([tiny], NOW)
    line = describe(ranked, NOW)
    assert "$0.0004 credit left of $0.001" in line and "$0.00 " not in line
