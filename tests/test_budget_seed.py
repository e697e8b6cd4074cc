"""Budget counters start from the ledger: usage recorded without the gate counts, gated calls count once.

Real SQLite and PostgreSQL ledgers (counters in the same database), and Redis counters seeded
from a SQLite ledger.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from llmbudget.admission import CallInfo
from llmbudget.budget.enforcer import BudgetEnforcer
from llmbudget.budget.factory import build_enforcer
from llmbudget.budget.status import budget_status
from llmbudget.config import parse_config
from llmbudget.events import UsageEvent
from llmbudget.money import to_nano
from llmbudget.store import open_ledger

BACKENDS = """
backends:
  claude: {kind: anthropic, base_url: https://api.anthropic.com}
  local: {kind: openai, base_url: http://127.0.0.1:11434, local: true}
"""
#: every call costs this much to reserve and to settle (a fixed price keeps the arithmetic visible)
PRICE = Decimal("0.50")
NOW = datetime(2025, 6, 15, 12, 30, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def ev(at: datetime, usd: str, **kw: Any) -> UsageEvent:
    base: dict[str, Any] = {
        "backend": "claude",
        "model": "m",
        "provider": "anthropic",
        "timestamp": at,
        "cost_usd": Decimal(usd),
        "price_status": "priced",
        "input_tokens": 100,
        "output_tokens": 10,
        "source": "import",
    }
    base.update(kw)
    return UsageEvent(**base)


def call(**kw: Any) -> CallInfo:
    base: dict[str, Any] = {
        "backend": "claude",
        "protocol": "anthropic",
        "provider": "anthropic",
        "model": "m",
        "est_input_tokens": 10,
        "max_output_tokens": 10,
    }
    base.update(kw)
    return CallInfo(**base)


def enforcer(
    db: str, budgets: str, state: Any, *, clock: Clock, redis: str | None = None, tz: str = "UTC"
) -> BudgetEnforcer:
    extra = f"  redis_url: {redis}\n" if redis else ""
    cfg, _ = parse_config(BACKENDS + f"budgets:\n  timezone: {tz}\n{extra}" + budgets, "seed.yaml")
    return build_enforcer(
        cfg,
        db,
        state=state,
        price_fn=lambda *a: PRICE,
        clock=clock,
        redis_prefix=f"llmbtest:{uuid.uuid4().hex[:8]}:",
    )


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(ledger URL, Redis URL or None): counters in the ledger's database, or in Redis."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url")), None
    redis = str(request.getfixturevalue("redis_url")) if request.param == "redis" else None
    return f"sqlite:///{tmp_path / 'l.db'}", redis


def _cleanup(enf: BudgetEnforcer) -> None:
    from llmbudget.budget.counters import RedisCounters

    if isinstance(enf.store, RedisCounters):
        for k in enf.store._r.scan_iter(match=enf.store.prefix + "*"):
            enf.store._r.delete(k)
    enf.close()


def test_ungated_usage_in_the_window_counts_and_refuses(setup: tuple[str, str | None]) -> None:
    db, redis = setup
    ledger = open_ledger(db, audit=False)
    # spent today without the gate: imports, wrap() without a gate, events before budgets existed
    ledger.record_many(
        [
            ev(NOW - timedelta(hours=3), "3.25"),
            ev(NOW - timedelta(hours=12, minutes=29), "1.00"),  # 00:01 today
            ev(NOW - timedelta(hours=12, minutes=31), "9.00"),  # 23:59 yesterday: another window
            ev(
                NOW - timedelta(hours=1),
                "7.00",
                backend="local",
                provider="local",
                price_status="local",
                cost_usd=Decimal(0),
            ),  # local calls never count
        ]
    )
    enf = enforcer(db, "  daily_limit_usd: 5.00\n", ledger, clock=Clock(NOW), redis=redis)
    try:
        [st] = budget_status(enf.budgets, enf.store, enf.tz, NOW)
        assert st.spent == to_nano(Decimal("4.25"))
        first = enf.admit(call())  # 4.25 + 0.50 fits under 5.00
        assert first.allowed and first.reservation_id
        second = enf.admit(call())  # 4.25 + 0.50 reserved + 0.50 does not
        assert not second.allowed and second.status == 429
        assert "$4.25" in (second.message or "") and "$5.00" in (second.message or "")
    finally:
        _cleanup(enf)
        ledger.close()


def test_gated_calls_are_not_counted_twice(setup: tuple[str, str | None]) -> None:
    db, redis = setup
    ledger = open_ledger(db, audit=False)
    ledger.record_many([ev(NOW - timedelta(hours=2), "1.00")])
    clock = Clock(NOW)
    enf = enforcer(db, "  daily_limit_usd: 100\n", ledger, clock=clock, redis=redis)
    enf2: BudgetEnforcer | None = None
    try:
        for i in range(3):
            adm = enf.admit(call())
            assert adm.allowed
            done = ev(NOW + timedelta(minutes=i), "0.25", source="proxy")
            enf.settle(adm, done)
            ledger.record(done)  # the gated call's event lands in the ledger too
        ledger.flush()
        # a second process (or a restart) opening the same counters: the counter exists, no re-seed
        enf2 = enforcer(db, "  daily_limit_usd: 100\n", ledger, clock=clock, redis=redis)
        if redis:  # the same Redis keys as the first process
            enf2.store.close()
            enf2.store = enf.store
        [st] = budget_status(enf2.budgets, enf2.store, enf2.tz, NOW)
        assert st.spent == to_nano(Decimal("1.75"))
        total = sum(
            r.cost_nano for r in ledger.costs(since=NOW.replace(hour=0, minute=0), until=NOW + timedelta(1))
        )
        assert st.spent == total  # `llmbudget budget` agrees with `llmbudget costs`
        adm = enf2.admit(call())
        assert adm.allowed
        enf2.settle(adm, ev(NOW, "0.25"))
        [st] = budget_status(enf2.budgets, enf2.store, enf2.tz, NOW)
        assert st.spent == to_nano(Decimal("2.00"))
    finally:
        if enf2 is not None:  # the second process's counter store (and its heartbeat) closed too
            if enf2.store is enf.store:
                enf2.book.close()
            else:
                enf2.close()
        _cleanup(enf)
        ledger.close()


def test_a_limit_added_later_starts_from_the_ledger(setup: tuple[str, str | None]) -> None:
    db, redis = setup
    ledger = open_ledger(db, audit=False)
    clock = Clock(NOW)
    enf = enforcer(db, "  daily_limit_usd: 100\n", ledger, clock=clock, redis=redis)
    try:
        for agent in ("bot", "bot", "other"):
            adm = enf.admit(call(agent=agent))
            done = ev(NOW - timedelta(minutes=5), "0.40", agent=agent, source="proxy")
            enf.settle(adm, done)
            ledger.record(done)
        ledger.record_many([ev(NOW - timedelta(days=2), "5", agent="bot")])  # last week: other window
        ledger.flush()
        # restart with a new per-agent weekly limit: its counters are new, so they start from the ledger
        enf2 = enforcer(
            db,
            "  daily_limit_usd: 100\n  limits:\n    - {scope: agent, limit_usd: 1.00, period: day}\n",
            ledger,
            clock=clock,
            redis=redis,
        )
        rows = {
            s.value: s.spent
            for s in budget_status(enf2.budgets, enf2.store, enf2.tz, NOW)
            if s.budget.scope == "agent"
        }
        assert rows == {"bot": to_nano(Decimal("0.80")), "other": to_nano(Decimal("0.40"))}
        refused = enf2.admit(call(agent="bot"))  # 0.80 + 0.50 > 1.00
        assert not refused.allowed and "agent:each:day" in (refused.message or "")
        assert enf2.admit(call(agent="other")).allowed  # 0.40 + 0.50 fits
        [daily] = [
            s for s in budget_status(enf2.budgets, enf2.store, enf2.tz, NOW) if s.budget.name == "daily"
        ]
        assert daily.spent == to_nano(Decimal("1.20"))  # the old counter, not re-seeded
        if redis:
            _cleanup(enf2)
        else:
            enf2.close()
    finally:
        _cleanup(enf)
        ledger.close()


def test_session_rolling_and_token_budgets_seed_exactly(ledger_url: str) -> None:
    db = ledger_url
    ledger = open_ledger(db, audit=False)
    ledger.record_many(
        [
            ev(NOW - timedelta(days=3), "0.70", session="s1"),  # a session spans windows: all of it counts
            ev(NOW - timedelta(minutes=1), "0.20", session="s1"),
            ev(NOW - timedelta(minutes=1), "0.30", session="s2"),
            ev(NOW - timedelta(hours=4, minutes=30), "0.11", team="red"),  # inside 5h (whole-hour buckets)
            ev(NOW - timedelta(hours=7), "5.00", team="red"),  # outside
        ]
    )
    enf = enforcer(
        db,
        "  limits:\n"
        "    - {scope: session, limit_usd: 1.00, period: session}\n"
        "    - {scope: team, match: red, limit_usd: 1.00, period: 5h}\n"
        "    - {scope: global, limit_tokens: 1000, period: day}\n",
        ledger,
        clock=Clock(NOW),
    )
    try:
        refused = enf.admit(call(session="s1"))  # 0.90 + 0.50 > 1.00
        assert not refused.allowed and "session" in (refused.message or "")
        assert enf.admit(call(session="s2")).allowed  # 0.30 + 0.50
        st = {(s.budget.scope, s.value): s for s in budget_status(enf.budgets, enf.store, enf.tz, NOW)}
        assert st[("session", "s1")].spent == to_nano(Decimal("0.90"))
        assert st[("team", "red")].spent == to_nano(Decimal("0.11"))
        # tokens today: four events of 110 tokens (the one three days ago is another day)
        assert st[("global", "*")].spent == 4 * 110
    finally:
        enf.close()
        ledger.close()


def test_half_hour_zone_day_edges_are_exact(ledger_url: str) -> None:
    """Asia/Kolkata days start at 18:30 UTC: the half hours at the edges come from raw events."""
    kolkata = ZoneInfo("Asia/Kolkata")
    now = datetime(2025, 6, 15, 12, 0, tzinfo=kolkata)
    start = datetime(2025, 6, 15, tzinfo=kolkata)
    ledger = open_ledger(ledger_url, audit=False)
    ledger.record_many(
        [
            ev(start - timedelta(minutes=1), "2.00"),  # 18:29 UTC the day before: yesterday here
            ev(start, "0.01"),  # the first instant of today
            ev(start + timedelta(minutes=29), "0.02"),  # still in the half hour before a whole UTC hour
            ev(now - timedelta(hours=5), "0.04"),
        ]
    )
    enf = enforcer(ledger_url, "  daily_limit_usd: 1\n", ledger, clock=Clock(now), tz="Asia/Kolkata")
    try:
        [st] = budget_status(enf.budgets, enf.store, enf.tz, now)
        assert st.spent == to_nano(Decimal("0.07"))
        costs = ledger.costs(since=start, until=start + timedelta(days=1), tz=kolkata)
        assert st.spent == sum(r.cost_nano for r in costs)
    finally:
        enf.close()
        ledger.close()


def test_concurrent_first_calls_seed_once(tmp_path: Path) -> None:
    """Many threads creating the same counter at once: the ledger's spend is added exactly once."""
    import threading

    db = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = open_ledger(db, audit=False)
    ledger.record_many([ev(NOW - timedelta(hours=1), "2.00")])
    enfs = [enforcer(db, "  daily_limit_usd: 100\n", ledger, clock=Clock(NOW)) for _ in range(4)]
    try:
        barrier = threading.Barrier(len(enfs))

        def one(e: BudgetEnforcer) -> None:
            barrier.wait()
            adm = e.admit(call())
            e.settle(adm, ev(NOW, "0.10"))

        ts = [threading.Thread(target=one, args=(e,)) for e in enfs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for e in enfs:  # each process's lease shows as reserved until its unused part goes back
            e.give_back()
        [st] = budget_status(enfs[0].budgets, enfs[0].store, enfs[0].tz, NOW)
        assert st.spent == to_nano(Decimal("2.40"))
        assert st.reserved == 0
    finally:
        for e in enfs:
            e.close()
        ledger.close()
