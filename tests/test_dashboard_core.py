"""Pure rules of the dashboard: forecast, agent card colours/trend/runaway; live fan-out; threshold watch."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbudget.agentstats import avg_cost, cost_level, runaway, trend
from llmbudget.alerts import Notifier
from llmbudget.budget.forecast import month_bounds, month_end_projection, run_out
from llmbudget.budget.thresholds import ThresholdWatch, applicable
from llmbudget.events import UsageEvent
from llmbudget.fanout import RECENT_COSTS, LiveHub, increment, increments
from llmbudget.store import open_ledger
from llmbudget.store.dashboard import Threshold, set_threshold

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
NANO = 1_000_000_000


@pytest.mark.parametrize(
    ("cost", "level"),
    [(0, "green"), (NANO - 1, "green"), (NANO, "yellow"), (5 * NANO, "yellow"), (5 * NANO + 1, "red")],
)
def test_cost_level_edges(cost: int, level: str) -> None:
    assert cost_level(cost) == level


@pytest.mark.parametrize(
    ("costs", "expected"),
    [
        ([], "flat"),
        ([5], "flat"),
        ([1, 1, 1, 1, 2, 2, 2, 2], "rising"),
        ([4, 4, 4, 1, 1, 1], "falling"),
        ([100, 104, 98, 101], "flat"),
        ([0, 0, 3], "rising"),
        ([9] * 20 + [1, 1, 1, 1, 1, 2, 2, 2, 2, 2], "rising"),  # only the last 10 count
    ],
)
def test_trend(costs: list[int], expected: str) -> None:
    assert trend(costs) == expected


def test_avg_cost_uses_the_last_ten() -> None:
    assert avg_cost([]) is None
    assert avg_cost([1000] * 5 + [10] * 10) == 10


def test_runaway_needs_a_jump_over_its_own_baseline_and_a_minimum() -> None:
    now = 10_000 * 60 * 1_000_000
    minute = 60 * 1_000_000
    steady = [(now - i * minute, 60_000_000) for i in range(60)]  # $0.06 a minute for an hour
    assert runaway(steady, now)[0] is False  # expensive but steady
    spike = [(now - i * minute, 1_000_000) for i in range(5, 60)] + [
        (now - i * minute, 200_000_000) for i in range(5)
    ]
    flagged, current, baseline = runaway(spike, now)
    assert flagged and current == 1_000_000_000 and baseline == 5_000_000
    small = [(now - i * minute, 1_000) for i in range(5, 60)] + [(now - minute, 100_000_000)]
    assert runaway(small, now)[0] is False  # a jump, but under $0.50
    assert runaway([(now - minute, 600_000_000)], now)[0] is True  # idle agent that suddenly burns


def test_run_out_dates() -> None:
    start = T0 - timedelta(days=9)  # month window started 9 days ago
    reset = T0 + timedelta(days=22)
    # $9 in 9 days of a $30 budget: $1/day, runs out in 21 days, just before the reset
    ro = run_out(30 * NANO, 9 * NANO, now=T0, window_start=start, reset=reset)
    assert ro.at is not None and abs((ro.at - (T0 + timedelta(days=21))).total_seconds()) < 1
    assert not ro.exhausted and not ro.holds
    held = run_out(100 * NANO, 9 * NANO, now=T0, window_start=start, reset=reset)
    assert held.at is None and held.holds and held.projected_at_reset == 31 * NANO
    assert run_out(5 * NANO, 5 * NANO, now=T0, window_start=start, reset=reset).exhausted
    assert run_out(5 * NANO, 0, now=T0, window_start=start, reset=reset).holds
    # a window one minute old extrapolates over at least an hour
    young = run_out(10 * NANO, NANO, now=T0, window_start=T0 - timedelta(minutes=1), reset=None)
    assert young.at is not None and abs((young.at - (T0 + timedelta(hours=9))).total_seconds()) < 1


def test_month_end_projection() -> None:
    start, end = month_bounds(T0)
    assert start == datetime(2026, 3, 1, tzinfo=UTC) and end == datetime(2026, 4, 1, tzinfo=UTC)
    # $7 over the last 7 days = $1/day; 21.5 days left
    p = month_end_projection(10 * NANO, 7 * NANO, timedelta(days=7), now=T0, month_end=end)
    assert p == 10 * NANO + int(21.5 * NANO)


def test_applicable_thresholds_prefer_the_agents_own() -> None:
    ts = [
        Threshold("session", "*", 5, False),
        Threshold("session", "a", 9, True),
        Threshold("agent", "*", 1, False),
    ]
    assert applicable(ts, "a")["session"].limit_nano == 9 and applicable(ts, "b")["session"].limit_nano == 5
    assert applicable(list(reversed(ts)), "a")["session"].limit_nano == 9
    assert applicable(ts, "a")["agent"].limit_nano == 1


def _ev(agent: str, session: str, cost: str) -> UsageEvent:
    return UsageEvent(
        backend="openai",
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=10,
        output_tokens=5,
        cost_usd=Decimal(cost),
        price_status="priced",
        agent=agent,
        session=session,
    )


def test_threshold_watch_notifies_once_and_pauses(tmp_path: Path) -> None:
    ledger = open_ledger(f"sqlite:///{tmp_path / 'l.db'}")
    try:
        ledger.record_many([_ev("bot", "s1", "0.40"), _ev("bot", "s1", "0.70")])
        set_threshold(ledger, Threshold("session", "bot", NANO, True))
        paused: list[tuple[str, str]] = []
        watch = ThresholdWatch(
            ledger,
            tz=datetime.now().astimezone().tzinfo,
            notifier=Notifier(ledger),  # type: ignore[arg-type]
            pause=lambda a, r: paused.append((a, r)),
        )
        [n] = watch.check("bot", "s1")
        assert (
            n.kind == "threshold_crossed"
            and "'bot'" in n.message
            and "$1.1000" in n.message
            and "$1.0000" in n.message
        )
        assert paused and paused[0][0] == "bot"
        assert watch.check("bot", "s1") == []  # once per session
        assert watch.check("bot", "s2") == []  # no spend in s2
        stored = ledger.list_state("notifications")
        assert any(v["kind"] == "threshold_crossed" for v in stored.values())
    finally:
        ledger.close()


async def _collect(hub: LiveHub, n: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    sub = hub.subscribe()
    got: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            got.extend(await sub.get(0.2))
    finally:
        sub.close()
    return got


def test_fanout_in_process_delivers_increments() -> None:
    hub = LiveHub().start()

    async def main() -> list[dict[str, Any]]:
        task = asyncio.create_task(_collect(hub, 2))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        hub.publish(_ev("a", "s", "0.25"))
        hub.publish_notice({"kind": "budget_warning", "message": "m"})
        got = await task
        assert time.monotonic() - t0 < 1.0
        return got

    try:
        got = asyncio.run(main())
    finally:
        hub.close()
    assert got[0]["type"] == "usage" and got[0]["agent"] == "a" and got[0]["cost_usd"] == "0.250000000"
    assert got[0]["tokens"] == 15 and got[1]["type"] == "notice"


def test_slow_subscriber_gets_a_resync_marker() -> None:
    hub = LiveHub()

    async def main() -> list[dict[str, Any]]:
        sub = hub.subscribe(maxsize=3)
        sub.offer([{"type": "usage", "n": i} for i in range(2)])
        sub.offer([{"type": "usage", "n": i} for i in range(2, 5)])
        return await sub.get(0)

    got = asyncio.run(main())
    assert got == [{"type": "resync", "reason": "slow client: increments dropped"}]


def test_fanout_through_redis_reaches_every_replica(redis_url: str) -> None:
    a, b = LiveHub(redis_url).start(), LiveHub(redis_url).start()

    async def main() -> list[dict[str, Any]]:
        task = asyncio.create_task(_collect(b, 1, timeout=5))
        await asyncio.sleep(0.05)
        deadline = time.monotonic() + 5
        while a._pubsub is None or b._pubsub is None:  # both subscribed
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        a.publish(_ev("from-a", "s", "0.01"))
        got: list[dict[str, Any]] = []
        sub = b.subscribe()
        try:  # other servers sharing this Redis database may publish too: look for ours
            end = time.monotonic() + 5
            while time.monotonic() < end and not any(x.get("agent") == "from-a" for x in got):
                got.extend(await sub.get(0.2))
        finally:
            sub.close()
        task.cancel()
        return got

    try:
        got = asyncio.run(main())
    finally:
        a.close()
        b.close()
    mine = [x for x in got if x.get("agent") == "from-a"]
    assert mine and mine[0]["replica"] == a.replica != b.replica
    json.dumps(got)


def test_fanout_on_another_redis_database_is_not_heard(redis_url: str) -> None:
    """Redis channels are shared by every database of a server: the channel names the database."""
    other = redis_url.rsplit("/", 1)[0] + "/" + ("9" if not redis_url.endswith("/9") else "8")
    a, b = LiveHub(other).start(), LiveHub(redis_url).start()
    assert a.channel != b.channel

    async def main() -> list[dict[str, Any]]:
        sub = b.subscribe()
        deadline = time.monotonic() + 5
        while a._pubsub is None or b._pubsub is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        a.publish(_ev("other-db", "s", "0.01"))
        got: list[dict[str, Any]] = []
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            got.extend(await sub.get(0.2))
        sub.close()
        return got

    try:
        got = asyncio.run(main())
    finally:
        a.close()
        b.close()
    assert not [x for x in got if x.get("agent") == "other-db"]


def _spent(ts: datetime, usd: str) -> UsageEvent:
    return UsageEvent(
        timestamp=ts,
        backend="openai",
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=1000,
        output_tokens=100,
        cost_usd=Decimal(usd),
        price_status="priced",
    )


def test_first_day_of_use_projects_from_todays_burn(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    from llmbudget.web.data.spend import spend_totals

    ledger = open_ledger(f"sqlite:///{tmp_path / 'f.db'}", flush_interval_s=0.05)
    try:
        ledger.record_many([_spent(T0 - timedelta(hours=2), "6")])
        ledger.flush()
        f = spend_totals(ledger, ZoneInfo("UTC"), T0)["forecast"]
        # $6 in the 12 hours since the first day with calls began = $12/day; 21.5 days left
        assert Decimal(f["per_day_usd"]) == 12
        assert abs(f["month_end_projected_nano"] - (6 * NANO + 21.5 * 12 * NANO)) < 1000
        assert f["rate_basis"] == "since Mar 10"
        # with a week of history the rate is the last 7 days' and today's, over 7.5 days
        ledger.record_many([_spent(T0 - timedelta(days=9), "100"), _spent(T0 - timedelta(days=6), "9")])
        ledger.flush()
        f = spend_totals(ledger, ZoneInfo("UTC"), T0)["forecast"]
        assert f["rate_basis"] == "last 7 days"
        assert Decimal(f["per_day_usd"]) == 2
    finally:
        ledger.close()


_calls = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", None]),  # agent
        st.sampled_from(["s1", "s2"]),  # session
        st.sampled_from(["gpt-4o-mini", "gpt-4o"]),  # model
        st.one_of(st.none(), st.integers(0, 10**12)),  # cost in nano-dollars (None: unpriced)
        st.integers(0, 10**6),  # input tokens
        st.integers(0, 10**5),  # output tokens
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_calls)
def test_coalesced_increments_add_up_to_the_calls_they_cover(calls: list[tuple[Any, ...]]) -> None:
    events = [
        UsageEvent(
            timestamp=T0 + timedelta(seconds=i),
            backend="openai",
            provider="openai",
            model=model,
            input_tokens=inp,
            output_tokens=out,
            cost_usd=None if nano is None else Decimal(nano) / NANO,
            price_status="unpriced" if nano is None else "priced",
            agent=agent,
            session=session,
        )
        for i, (agent, session, model, nano, inp, out) in enumerate(calls)
    ]
    got = increments(events, "r1")
    one_each = [increment(e, "r1") for e in events]

    def totals(incs: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[int]]:
        out: dict[tuple[Any, ...], list[int]] = {}
        for x in incs:
            acc = out.setdefault((x["agent"], x["session"], x["model"]), [0, 0, 0, 0, 0])
            acc[0] += x["calls"]
            acc[1] += x["tokens"]
            acc[2] += x["input_tokens"]
            acc[3] += x["cost_nano"] or 0
            acc[4] += x["cost_nano"] is not None
        return out

    # what a page sums (calls, tokens, cost per agent/session/model) is exactly the per-call sum
    want, have = totals(one_each), totals(got)
    assert {k: v[:4] for k, v in have.items()} == {k: v[:4] for k, v in want.items()}
    assert len(got) == len(have)  # one increment per group
    for x in got:
        group = [e for e in events if (e.agent, e.session, e.model) == (x["agent"], x["session"], x["model"])]
        assert x["id"] == group[-1].id and x["calls"] == len(group)  # the latest call's id and time
        known = [e.cost_nano for e in group if e.cost_nano is not None]
        assert x["cost_nano"] == (sum(known) if known else None)
        if x["calls"] > 1:  # the cards' trend still sees each call's own cost, in order
            assert x["recent_costs"] == known[-RECENT_COSTS:]
            assert (x["cost_usd"] is None) == (not known)
            assert not known or Decimal(x["cost_usd"]) == Decimal(sum(known)) / NANO
    # groups come in the order of their latest call: a card ends on the session that came last
    order = [max(i for i, e in enumerate(events) if e.id in {x["id"]}) for x in got]
    assert order == sorted(order)


def test_a_burst_reaches_a_page_as_one_increment_per_agent() -> None:
    hub = LiveHub().start()
    burst = [_ev("burst", "s", "0.001") for _ in range(500)] + [_ev("other", "s", "0.002")]

    async def main() -> list[dict[str, Any]]:
        sub = hub.subscribe()
        try:
            await asyncio.sleep(0.05)
            for e in burst:
                hub.publish(e)
            got: list[dict[str, Any]] = []
            while sum(x.get("calls", 0) for x in got) < len(burst):
                more = await sub.get(2)
                assert more, "the burst did not arrive"
                got.extend(more)
            return got
        finally:
            sub.close()

    try:
        got = asyncio.run(main())
    finally:
        hub.close()
    assert len(got) <= 4  # one per agent per dispatch (the burst may straddle two dispatches)
    by_agent: dict[str, int] = {}
    for x in got:
        by_agent[x["agent"]] = by_agent.get(x["agent"], 0) + x["calls"]
    assert by_agent == {"burst": 500, "other": 1}
    assert sum(x["cost_nano"] for x in got) == 500 * 1_000_000 + 2_000_000
