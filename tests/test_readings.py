"""QuotaReading serialization and the daily JSONL log."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from llmbudget.quota.readings import Limit, QuotaReading, Window
from llmbudget.quota.readings_log import latest_by_backend, log_path, read_log, store_reading

T0 = datetime(2025, 7, 22, 23, 59, 0, tzinfo=UTC)


def sample(ts: datetime = T0, backend: str = "max1") -> QuotaReading:
    return QuotaReading(
        timestamp=ts,
        backend=backend,
        provider="anthropic-unified",
        source="probe",
        status="allowed_warning",
        windows={"5h": Window(0.81, ts + timedelta(hours=2), "allowed"), "7d_oi": Window(0.1, None)},
        limits={"tokens": Limit(1000, 10, ts + timedelta(seconds=5)), "requests": Limit(unlimited=True)},
        retry_after_s=1.5,
        cost_usd=Decimal("0.000415"),
        key_valid=True,
        credit_usd=Decimal("3.25"),
        violations=[{"quota_metric": "m", "quota_id": "q"}],
        retry_delay_s=7.0,
        http_status=200,
        reason=None,
        raw={"anthropic-ratelimit-unified-status": "allowed_warning"},
    )


def test_round_trip_is_exact() -> None:
    r = sample()
    d = r.to_dict()
    json.dumps(d)  # JSON-ready
    assert d["timestamp"] == "2025-07-22T23:59:00Z"
    assert d["cost_usd"] == "0.000415"
    back = QuotaReading.from_dict(d)
    assert back == r


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"timestamp": "yesterday", "backend": "a"},
        {"timestamp": "2025-01-01T00:00:00Z"},
        {"timestamp": "2025-01-01T00:00:00Z", "backend": "a", "source": "guess"},
        {"timestamp": "2025-01-01T00:00:00Z", "backend": "a", "windows": ["5h"]},
    ],
)
def test_from_dict_rejects_non_readings(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        QuotaReading.from_dict(bad)


def test_log_one_file_per_utc_day(tmp_path: Path) -> None:
    tmp_path = tmp_path / "quota"
    a, b = sample(T0), sample(T0 + timedelta(minutes=2), backend="grok")
    store_reading(None, a, log_dir=tmp_path)
    store_reading(None, b, log_dir=tmp_path)
    assert log_path(T0, tmp_path).name == "readings-2025-07-22.jsonl"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "readings-2025-07-22.jsonl",
        "readings-2025-07-23.jsonl",
    ]
    assert read_log(tmp_path) == [a, b]
    assert read_log(tmp_path, backend="grok") == [b]
    assert read_log(tmp_path, since=T0 + timedelta(minutes=1)) == [b]


def test_default_log_dir_is_under_data_dir(hermetic_env: Path) -> None:
    store_reading(None, sample())
    assert (hermetic_env / "data" / "quota" / "readings-2025-07-22.jsonl").exists()
    assert read_log() == [sample()]


def test_corrupted_line_skipped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tmp_path = tmp_path / "quota"
    store_reading(None, sample(), log_dir=tmp_path)
    path = log_path(T0, tmp_path)
    with path.open("a") as fh:
        fh.write('{"timestamp": "2025-07-22T23:59:30Z", "backe\n')
        fh.write('["not", "a", "reading"]\n')
    store_reading(None, sample(T0 + timedelta(seconds=40)), log_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="llmbudget.quota"):
        got = read_log(tmp_path)
    assert [r.timestamp for r in got] == [T0, T0 + timedelta(seconds=40)]
    messages = [rec.getMessage() for rec in caplog.records]
    assert any(f"file={path}" in m and "line=2" in m for m in messages)
    assert any("line=3" in m for m in messages)


def test_latest_by_backend_from_ledger_shape() -> None:
    old, new, other = sample(T0), sample(T0 + timedelta(minutes=5)), sample(T0, backend="grok")
    got = latest_by_backend({"max1": new.to_dict(), "grok": other.to_dict(), "broken": {"x": 1}})
    assert got == {"max1": new, "grok": other}
    assert latest_by_backend([new, old, other])["max1"] == new


def test_an_unwritable_log_still_stores_in_the_ledger(tmp_path: Path) -> None:
    from llmbudget.store import open_ledger

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log directory should be")
    ledger = open_ledger(f"sqlite:///{tmp_path / 'l.db'}", audit=False)
    try:
        with pytest.raises(OSError):
            store_reading(ledger, sample(), log_dir=blocker / "quota")
        stored = ledger.latest_readings()
    finally:
        ledger.close()
    assert stored["max1"]["windows"]["5h"]["utilization"] == pytest.approx(0.81)
