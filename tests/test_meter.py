"""The in-process meter: exact totals under contention, small snapshots, event-driven subscribers."""

from __future__ import annotations

import json
import logging
import threading
from decimal import Decimal
from typing import Any

import pytest

import llmbudget
from llmbudget.errors import ValidationError
from llmbudget.events import UsageEvent
from llmbudget.meter import NONE_KEY, Meter, MeterUpdate


def test_public_export() -> None:
    assert llmbudget.Meter is Meter


def test_totals_per_tier_agent_model_and_session() -> None:
    m = Meter()
    m.record(
        tier="fast",
        agent="planner",
        model="gpt-4o-mini",
        input_tokens=1000,
        output_tokens=200,
        cached_input_tokens=400,
        cost_usd=Decimal("0.0012"),
    )
    m.record(
        tier="smart",
        agent="planner",
        model="claude-sonnet-4-5",
        input_tokens=3000,
        output_tokens=500,
        reasoning_tokens=100,
        cost_usd=Decimal("0.0165"),
    )
    m.record(tier="fast", agent="coder", model="gpt-4o-mini", input_tokens=10, output_tokens=5, cost_nano=7)
    snap = m.snapshot(detail=True)
    s = snap["session"]
    assert s == {
        "calls": 3,
        "input_tokens": 4010,
        "output_tokens": 705,
        "cached_input_tokens": 400,
        "reasoning_tokens": 100,
        "cost_usd": "0.017700007",
        "unpriced_calls": 0,
    }
    assert snap["tiers"]["fast"] == {
        "calls": 2,
        "input_tokens": 1010,
        "output_tokens": 205,
        "cost_usd": "0.001200007",
        "cached_input_tokens": 400,
    }
    assert snap["tiers"]["smart"]["reasoning_tokens"] == 100
    assert snap["agents"]["planner"]["calls"] == 2
    assert snap["agents"]["planner"]["cost_usd"] == "0.0177"
    assert snap["models"]["gpt-4o-mini"]["input_tokens"] == 1010
    assert m.total_cost() == Decimal("0.017700007")


def test_unpriced_calls_are_counted_apart_not_as_zero() -> None:
    m = Meter()
    m.record(tier="t", model="mystery-model", input_tokens=100, output_tokens=10)  # no cost: unpriced
    m.record(tier="t", model="gpt-4o", input_tokens=100, output_tokens=10, cost_usd=Decimal("0.002"))
    snap = m.snapshot(detail=True)
    assert snap["session"]["unpriced_calls"] == 1
    assert snap["session"]["cost_usd"] == "0.002"
    assert snap["models"]["mystery-model"]["cost_usd"] is None  # unknown, never "0"
    assert snap["models"]["mystery-model"]["unpriced_calls"] == 1
    assert snap["tiers"]["t"]["unpriced_calls"] == 1
    assert snap["tiers"]["t"]["cost_usd"] == "0.002"


def test_record_a_usage_event() -> None:
    m = Meter()
    ev = UsageEvent(
        backend="openai",
        model="gpt-4o",
        input_tokens=50,
        cached_input_tokens=20,
        output_tokens=9,
        reasoning_tokens=3,
        cost_usd=Decimal("0.000123456"),
        price_status="priced",
        agent="a1",
        tier="smart",
    )
    m.record(ev)
    m.record(UsageEvent(backend="x", model="unknown-llm", input_tokens=5, agent="a1"))
    snap = m.snapshot(detail=True)
    assert snap["tiers"]["smart"] == {
        "calls": 1,
        "input_tokens": 50,
        "output_tokens": 9,
        "cost_usd": "0.000123456",
        "cached_input_tokens": 20,
        "reasoning_tokens": 3,
    }
    assert snap["tiers"][NONE_KEY]["unpriced_calls"] == 1
    assert snap["agents"]["a1"]["calls"] == 2
    assert snap["session"]["unpriced_calls"] == 1


def test_cost_forms_are_exact() -> None:
    m = Meter()
    m.record(model="m", cost_usd="0.1")
    m.record(model="m", cost_usd=0.2)  # a float goes through its repr, not its binary value
    m.record(model="m", cost_usd=1)
    assert m.snapshot()["session"]["cost_usd"] == "1.3"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"input_tokens": -1}, "tokens"),
        ({"output_tokens": -5}, "tokens"),
        ({"input_tokens": 1.5}, "tokens"),
        ({"output_tokens": True}, "tokens"),
        ({"reasoning_tokens": "3"}, "tokens"),
        ({"cost_usd": Decimal("-0.01")}, "cost_usd"),
        ({"cost_usd": "abc"}, "cost_usd"),
        ({"cost_nano": -3}, "cost_usd"),
    ],
)
def test_bad_values_are_rejected_and_change_nothing(kwargs: dict[str, Any], field: str) -> None:
    m = Meter()
    with pytest.raises(ValidationError) as info:
        m.record(model="m", **kwargs)
    assert info.value.field == field
    assert m.snapshot()["session"]["calls"] == 0
    assert m.version == 0


def test_reset_zeroes_everything_and_keeps_versions_increasing() -> None:
    m = Meter()
    m.record(tier="a", model="m", input_tokens=5, cost_usd=Decimal("1"))
    v = m.version
    m.reset()
    snap = m.snapshot(detail=True)
    assert snap["session"]["calls"] == 0
    assert snap["session"]["cost_usd"] == "0"
    assert snap["tiers"] == {} and snap["agents"] == {} and snap["models"] == {}
    assert snap["version"] == v + 1


def test_eight_threads_lose_nothing() -> None:
    m = Meter()
    threads_n, per_thread = 8, 100_000
    tiers = ("fast", "smart", "reasoning", "local")
    start = threading.Barrier(threads_n)

    def work(i: int) -> None:
        tier = tiers[i % 4]
        rec = m.record
        start.wait()
        for _ in range(per_thread):
            rec(tier=tier, agent=f"agent{i}", model="m", input_tokens=3, output_tokens=2, cost_nano=7)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = m.snapshot(detail=True)
    total = threads_n * per_thread
    assert snap["session"]["calls"] == total
    assert snap["session"]["input_tokens"] == 3 * total
    assert snap["session"]["output_tokens"] == 2 * total
    assert snap["session"]["cost_usd"] == str(Decimal(7 * total) / 10**9)
    assert snap["version"] == total
    for tier in tiers:
        assert snap["tiers"][tier]["calls"] == 2 * per_thread
    for i in range(threads_n):
        assert snap["agents"][f"agent{i}"]["calls"] == per_thread


def _four_tier_meter() -> Meter:
    m = Meter()
    for i, tier in enumerate(("fast", "smart", "reasoning", "local")):
        for _ in range(3):
            m.record(
                tier=tier,
                agent=f"agent-{tier}",
                model=f"model-{tier}-2025-01-01",
                input_tokens=1_234_567,
                output_tokens=123_456,
                cached_input_tokens=1_000,
                reasoning_tokens=500 * i,
                cost_usd=Decimal("12.345678901"),
            )
    m.record(tier="fast", model="unpriced-model", input_tokens=10, output_tokens=1)
    return m


def test_snapshot_is_small_plain_json() -> None:
    snap = _four_tier_meter().snapshot()
    text = json.dumps(snap)
    assert len(text.encode()) < 1024, len(text)
    assert json.loads(text) == snap  # plain types only
    assert set(snap["tiers"]) == {"fast", "smart", "reasoning", "local"}
    assert "agents" not in snap
    detailed = _four_tier_meter().snapshot(detail=True)
    assert set(detailed["agents"]) == {
        "agent-fast",
        "agent-smart",
        "agent-reasoning",
        "agent-local",
        NONE_KEY,
    }


def test_subscriber_sees_every_change() -> None:
    m = Meter()
    seen: list[MeterUpdate] = []
    unsubscribe = m.subscribe(seen.append)
    m.record(tier="t", agent="a", model="m", input_tokens=1, output_tokens=2, cost_usd=Decimal("0.5"))
    m.record(model="m2", input_tokens=4)
    m.reset()
    assert [u.kind for u in seen] == ["record", "record", "reset"]
    assert [u.version for u in seen] == [1, 2, 3]
    assert seen[0].cost_usd == Decimal("0.5") and seen[0].tier == "t" and seen[0].output_tokens == 2
    assert seen[1].cost_usd is None  # unpriced
    unsubscribe()
    m.record(model="m")
    assert len(seen) == 3
    unsubscribe()  # twice is harmless


def test_subscriber_may_read_the_meter_without_deadlock() -> None:
    m = Meter()
    calls: list[int] = []
    m.subscribe(lambda u: calls.append(m.snapshot()["session"]["calls"]))
    m.record(model="m")
    m.record(model="m")
    assert calls == [1, 2]


def test_failing_subscriber_is_logged_and_recording_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    m = Meter()
    good: list[int] = []

    def bad(update: MeterUpdate) -> None:
        raise RuntimeError("gui gone")

    m.subscribe(bad)
    m.subscribe(lambda u: good.append(u.version))
    with caplog.at_level(logging.ERROR, logger="llmbudget.meter"):
        m.record(model="m", input_tokens=1)
    assert m.snapshot()["session"]["calls"] == 1
    assert good == [1]
    assert any("meter subscriber failed" in r.getMessage() for r in caplog.records)


def test_coalescing_subscriber_ends_with_the_final_state() -> None:
    m = Meter()
    got: list[dict[str, Any]] = []
    done = threading.Event()
    n = 500

    def on_snapshot(snap: dict[str, Any]) -> None:
        got.append(snap)
        if snap["session"]["calls"] == n:
            done.set()

    unsubscribe = m.subscribe(on_snapshot, coalesce_s=0.05)
    for _ in range(n):
        m.record(tier="t", model="m", input_tokens=1)
    assert done.wait(10), "the trailing snapshot never arrived"
    unsubscribe()
    assert got[-1]["session"]["calls"] == n
    assert len(got) < n  # coalesced, not one per change
    versions = [s["version"] for s in got]
    assert versions == sorted(versions)


def test_coalescing_subscriber_detail_and_unsubscribe_cancels_pending() -> None:
    m = Meter()
    got: list[dict[str, Any]] = []
    unsubscribe = m.subscribe(got.append, coalesce_s=30, detail=True)
    m.record(agent="a", model="m")  # delivered at once (leading edge)
    m.record(agent="a", model="m")  # within the interval: scheduled for later
    unsubscribe()  # cancels the pending delivery
    assert len(got) == 1
    assert got[0]["agents"]["a"]["calls"] == 1


def test_negative_coalesce_rejected() -> None:
    with pytest.raises(ValidationError):
        Meter().subscribe(print, coalesce_s=-1)
