"""The enforcer: reserve the worst case, refuse or fall back at the limit, settle, pause, warn once."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from llmbudget.admission import CallInfo
from llmbudget.budget.enforcer import BudgetEnforcer
from llmbudget.budget.factory import build_enforcer
from llmbudget.budget.gate import BudgetGate
from llmbudget.config import parse_config
from llmbudget.events import UsageEvent
from llmbudget.money import format_exact
from llmbudget.pricing import PriceBook, TokenUsage
from llmbudget.store import open_ledger

BACKENDS = """
backends:
  claude: {kind: anthropic, base_url: https://api.anthropic.com}
  gpt: {kind: openai, base_url: https://api.openai.com}
  local: {kind: openai, base_url: http://127.0.0.1:11434, local: true}
"""
MODEL = "claude-sonnet-4-5"
BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make(
    tmp_path: Path, budgets: str, clock: Clock, *, ledger: bool = True, factor: str = "1.0"
) -> tuple[BudgetEnforcer, object]:
    # input_token_factor 1: these tests reason about exact worst cases; the default (4) is tested below
    cfg, _ = parse_config(
        BACKENDS + budgets.replace("budgets:\n", f"budgets:\n  input_token_factor: {factor}\n", 1),
        "test.yaml",
    )
    db = f"sqlite:///{tmp_path / 'l.db'}"
    state = open_ledger(db, audit=False) if ledger else None
    enf = build_enforcer(cfg, db, state=state, prices=PriceBook.from_config(cfg), clock=clock)
    return enf, state


def call(**kw: object) -> CallInfo:
    base: dict[str, object] = {
        "backend": "claude",
        "protocol": "anthropic",
        "provider": "anthropic",
        "model": MODEL,
        "est_input_tokens": 1000,
        "max_output_tokens": 1000,
    }
    base.update(kw)
    return CallInfo(**base)  # type: ignore[arg-type]


def cost(tin: int, tout: int) -> Decimal:
    c = PriceBook().cost(MODEL, TokenUsage.of(tin, 0, 0, tout, 0), provider="anthropic").cost_usd
    assert c is not None
    return c


def event(tin: int, tout: int, **kw: object) -> UsageEvent:
    return UsageEvent(
        backend="claude",
        model=MODEL,
        provider="anthropic",
        input_tokens=tin,
        output_tokens=tout,
        cost_usd=cost(tin, tout),
        price_status="priced",
        **kw,
    )  # type: ignore[arg-type]


def test_refuses_at_the_daily_limit_with_budget_spent_limit_and_berlin_reset(tmp_path: Path) -> None:
    per_call = cost(1000, 1000)
    limit = per_call * 3  # room for exactly three worst cases
    clock = Clock(datetime(2025, 3, 29, 20, 0, tzinfo=UTC))  # 21:00 in Berlin, the night DST starts
    enf, _ = make(tmp_path, f"budgets:\n  daily_limit_usd: {limit}\n  timezone: Europe/Berlin\n", clock)
    admitted = [enf.admit(call()) for _ in range(3)]
    assert all(a.allowed and a.reservation_id for a in admitted)
    # nothing spent yet: the three calls in flight hold the budget, and the refusal says so
    held = enf.admit(call())
    assert not held.allowed and held.status == 429 and held.held_by_inflight
    assert held.retry_after_s == 2  # seconds, not the window's reset
    assert held.message is not None and "Cloud budget exhausted" not in held.message
    assert "reserved by 3 calls in flight" in held.message, held.message
    assert "has spent $0.0000" in held.message
    # settling below the worst case frees room for the next call
    enf.settle(admitted[0], event(1000, 10))
    enf.settle(admitted[1], event(1000, 10))
    fourth = enf.admit(call())
    assert fourth.allowed
    # spent money leaves no room for another worst case: exhausted until the window resets
    enf.settle(admitted[2], event(1000, 1000))
    enf.settle(fourth, event(1000, 1000))
    refused = enf.admit(call())
    assert not refused.allowed and refused.status == 429 and not refused.held_by_inflight
    assert refused.budgets == ("daily",)
    assert refused.message is not None
    assert "budget 'daily'" in refused.message
    assert "2025-03-30 00:00 CET" in refused.message  # next local midnight, before the DST switch
    assert "Cloud budget exhausted" in refused.message
    assert f"of its {format_exact(limit)} limit" in refused.message  # the limit as configured, not rounded
    assert refused.retry_after_s == 3 * 3600  # 21:00 -> 00:00 Berlin


def test_a_limit_under_a_cent_is_shown_as_it_is(tmp_path: Path) -> None:
    """A $0.001 limit reads `$0.001` in the 429 message (and so in the protocol's error body), never `<$0.01`."""
    clock = Clock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    enf, _ = make(tmp_path, "budgets:\n  daily_limit_usd: 0.001\n  timezone: UTC\n", clock)
    refused = enf.admit(call())
    assert not refused.allowed and refused.status == 429
    assert "of its $0.001 limit" in (refused.message or ""), refused.message
    assert "<$" not in (refused.message or "")
    # and in the alerts: a budget that only warns, crossed by one call
    alerting, state = make(
        tmp_path / "alerting",
        "budgets:\n  daily_limit_usd: 0.001\n  hard_stop: false\n  timezone: UTC\n",
        clock,
    )
    alerting.settle(alerting.admit(call()), event(1000, 1000))
    notes = list(state.list_state("notifications").values())  # type: ignore[attr-defined]
    assert notes and all("$0.001" in n["message"] and "<$" not in n["message"] for n in notes), notes
    assert {n["limit_usd"] for n in notes} == {"0.001000000"}


def test_fallback_admission_names_local_backend_model_and_reset(tmp_path: Path) -> None:
    clock = Clock(datetime(2025, 6, 30, 12, 0, tzinfo=UTC))
    enf, _ = make(
        tmp_path,
        "budgets:\n  monthly_limit_usd: 0.001\n  timezone: UTC\n  fallback: local\n"
        "  fallback_model: llama3.2\n",
        clock,
    )
    a = enf.admit(call())
    assert a.allowed and a.reservation_id is None
    assert (a.fallback_backend, a.fallback_model) == ("local", "llama3.2")
    assert a.notice == "Cloud budget exhausted, operating local-only until 2025-07-01 00:00 UTC"


def test_local_backends_are_never_counted(tmp_path: Path) -> None:
    clock = Clock(datetime(2025, 6, 30, 12, 0, tzinfo=UTC))
    enf, _ = make(tmp_path, "budgets:\n  daily_limit_usd: 0.000001\n", clock)
    for _ in range(5):
        a = enf.admit(
            call(backend="local", protocol="openai", provider="local", model="llama3.2", local=True)
        )
        assert a.allowed and a.reservation_id is None
    assert not enf.admit(call()).allowed


def test_calls_resume_by_themselves_when_the_period_resets(tmp_path: Path) -> None:
    per_call = cost(1000, 1000)
    clock = Clock(datetime(2025, 10, 25, 21, 30, tzinfo=UTC))  # 23:30 Berlin, before the DST end
    enf, _ = make(tmp_path, f"budgets:\n  daily_limit_usd: {per_call}\n  timezone: Europe/Berlin\n", clock)
    a = enf.admit(call())
    enf.settle(a, event(1000, 1000))
    r = enf.admit(call())
    assert not r.allowed and "2025-10-26 00:00 CEST" in (r.message or "")
    clock.now += timedelta(minutes=31)  # 00:01 Berlin on the 26th: a new day
    assert enf.admit(call()).allowed


def test_release_on_upstream_error_and_settle_of_interrupted_stream(tmp_path: Path) -> None:
    per_call = cost(1000, 1000)
    clock = Clock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    enf, _ = make(tmp_path, f"budgets:\n  daily_limit_usd: {per_call}\n  timezone: UTC\n", clock)
    a = enf.admit(call())
    assert not enf.admit(call()).allowed  # reserved
    enf.release(a)  # upstream connection failed: nothing spent
    b = enf.admit(call())
    assert b.allowed
    enf.settle(b, event(1000, 300, status="interrupted", streamed=True))  # cut mid-stream: tokens so far
    [st] = __import__("llmbudget.budget.status", fromlist=["budget_status"]).budget_status(
        enf.budgets, enf.store, enf.tz, clock.now
    )
    assert st.spent == event(1000, 300).cost_nano and st.reserved == 0


def test_every_applicable_budget_is_checked_and_backend_budgets_only_their_backend(tmp_path: Path) -> None:
    clock = Clock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    enf, _ = make(
        tmp_path,
        "budgets:\n  daily_limit_usd: 100\n  per_backend:\n    claude: 0.001/month\n    gpt: 10.00/month\n",
        clock,
    )
    r = enf.admit(call())
    assert not r.allowed and r.budgets == ("backend:claude/month",)
    a = enf.admit(call(backend="gpt", protocol="openai", provider="openai", model="gpt-4o-mini"))
    assert a.allowed and set(a.budgets) == {"daily", "backend:gpt/month"}


def test_per_agent_token_limit_counts_each_agent_separately(tmp_path: Path) -> None:
    clock = Clock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    enf, _ = make(
        tmp_path, "budgets:\n  limits:\n    - {scope: agent, limit_tokens: 2500, period: 5h}\n", clock
    )
    a1 = enf.admit(call(agent="a"))
    assert a1.allowed
    assert not enf.admit(call(agent="a")).allowed  # 2000 reserved + 2000 > 2500
    assert enf.admit(call(agent="b")).allowed
    assert enf.admit(call()).allowed  # no agent: the per-agent limit does not apply
    enf.settle(a1, event(100, 100))
    assert enf.admit(call(agent="a")).allowed  # 200 spent + 2000 <= 2500


def test_pause_action_pauses_the_agent_until_resumed_and_survives_restart(tmp_path: Path) -> None:
    clock = Clock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    cfg = "budgets:\n  limits:\n    - {scope: agent, match: runaway, limit_usd: 0.0001, action: pause}\n"
    enf, state = make(tmp_path, cfg, clock)
    r = enf.admit(call(agent="runaway"))
    assert not r.allowed and r.status == 429
    assert "Agent 'runaway' is paused" in (r.message or "") and "llmbudget agents resume runaway" in (
        r.message or ""
    )
    # paused for every call now, even one that would fit another budget
    assert not enf.admit(call(agent="runaway", model="claude-3-5-haiku-latest", max_output_tokens=1)).allowed
    assert enf.admit(call(agent="other")).allowed
    state.close()  # type: ignore[attr-defined]
    enf2, state2 = make(tmp_path, cfg, clock)  # a restart: the pause is in the ledger
    assert "runaway" in enf2.paused()
    assert enf2.resume("runaway") is True
    assert "runaway" not in enf2.paused()
    kinds = [n["kind"] for n in state2.list_state("notifications").values()]  # type: ignore[attr-defined]
    assert "agent_paused" in kinds


def test_warning_fires_once_per_threshold_and_window_across_instances(tmp_path: Path) -> None:
    per_call = cost(1000, 1000)
    clock = Clock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    cfg = f"budgets:\n  daily_limit_usd: {per_call * 10}\n  warning_threshold: [0.5, 0.8]\n  timezone: UTC\n"
    enf1, state = make(tmp_path, cfg, clock)
    enf2, _ = make(tmp_path, cfg, clock)  # a second process on the same database
    for i in range(9):
        enf = (enf1, enf2)[i % 2]
        a = enf.admit(call())
        enf.settle(a, event(1000, 1000))
    notes = list(state.list_state("notifications").values())  # type: ignore[attr-defined]
    warnings = sorted(n["threshold"] for n in notes if n["kind"] == "budget_warning")
    assert warnings == [0.5, 0.8]
    assert all("resets 2025-06-02 00:00 UTC" in n["message"] for n in notes)
    clock.now += timedelta(days=1)  # a new window warns again
    for _ in range(5):
        a = enf1.admit(call())
        enf1.settle(a, event(1000, 1000))
    notes = list(state.list_state("notifications").values())  # type: ignore[attr-defined]
    assert sorted(n["threshold"] for n in notes if n["kind"] == "budget_warning") == [0.5, 0.5, 0.8]


def test_unpriced_model_is_not_charged_to_usd_budgets_but_counts_tokens(tmp_path: Path) -> None:
    clock = Clock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    enf, _ = make(
        tmp_path,
        "budgets:\n  daily_limit_usd: 0.000001\n  limits:\n"
        "    - {scope: global, limit_tokens: 3000, period: day}\n",
        clock,
    )
    a = enf.admit(call(model="totally-unknown-model-x"))
    assert a.allowed
    assert not enf.admit(call(model="totally-unknown-model-x", max_output_tokens=2000)).allowed


def test_worst_case_uses_model_maximum_when_max_tokens_is_missing(tmp_path: Path) -> None:
    clock = Clock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    enf, _ = make(tmp_path, "budgets:\n  daily_limit_usd: 5\n", clock)
    tin, tout, c = enf.worst_case(call(max_output_tokens=None))
    assert tin == 1000 and tout == 64_000  # claude-sonnet-4 family
    assert c == cost(1000, 64_000)
    enf4, _ = make(tmp_path, "budgets:\n  daily_limit_usd: 5\n", clock, factor="4")
    assert enf4.worst_case(call())[:2] == (4000, 1000)  # the default bounds text input by its characters
    _, tout, _ = enf.worst_case(call(model="some-new-model", max_output_tokens=None))
    assert tout == 32768  # documented default


def test_a_session_budget_says_calls_resume_when_the_session_ends(tmp_path: Path) -> None:
    clock = Clock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    enf, _ = make(
        tmp_path, "budgets:\n  limits:\n    - {scope: session, limit_usd: 0.001, period: session}\n", clock
    )
    refused = enf.admit(call(session="s-1"))
    assert not refused.allowed and refused.status == 429
    assert "resume by themselves when the session ends" in (refused.message or ""), refused.message


def test_warning_comes_before_the_limit_alert_which_fires_when_spent_reaches_the_limit(
    tmp_path: Path,
) -> None:
    per_call = cost(1000, 1000)
    clock = Clock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    enf, state = make(tmp_path, f"budgets:\n  daily_limit_usd: {per_call * 10}\n  timezone: UTC\n", clock)

    def kinds() -> list[str]:
        notes = state.list_state("notifications")  # type: ignore[attr-defined]
        return [notes[k]["kind"] for k in sorted(notes)]

    held = [enf.admit(call()) for _ in range(10)]
    assert all(a.allowed for a in held)
    refused = enf.admit(call())  # the ten in flight hold the whole budget; nothing is spent
    assert refused.held_by_inflight and not refused.allowed
    assert kinds() == []  # reservations alone never raise the limit alert (nor silence it later)
    for a in held[:8]:
        enf.settle(a, event(1000, 1000))
    assert kinds() == ["budget_warning"]  # 80% spent
    enf.settle(held[8], event(1000, 1000))
    assert kinds() == ["budget_warning"]  # 90%: still under the limit
    enf.settle(held[9], event(1000, 1000))
    assert kinds() == ["budget_warning", "budget_exhausted"]  # spent reached the limit
    final = enf.admit(call())
    assert not final.allowed and not final.held_by_inflight
    assert "Cloud budget exhausted" in (final.message or "")
    assert kinds() == ["budget_warning", "budget_exhausted"]  # once per window
    enf.close()


def test_both_faces_of_the_gate_wait_for_calls_in_flight_to_settle(tmp_path: Path) -> None:
    """A call refused only because calls in flight hold the budget waits for a settlement: the
    sync face in the caller's thread, the async face on the caller's event loop, alike."""
    per_call = cost(1000, 1000)
    clock = Clock(datetime(2025, 3, 29, 12, 0, tzinfo=UTC))
    enf, _ = make(tmp_path, f"budgets:\n  daily_limit_usd: {per_call * 3}\n  timezone: UTC\n", clock)
    gate = BudgetGate(enf, wait_s=5)
    held = [gate.admit_sync(call()) for _ in range(3)]
    assert all(a.allowed and a.reservation_id for a in held)

    def release_one_later() -> threading.Thread:  # a call that spent nothing frees its worst case
        adm = held.pop()
        t = threading.Timer(0.3, lambda: gate.release_sync(adm))
        t.start()
        return t

    t = release_one_later()
    started = time.monotonic()
    admitted = gate.admit_sync(call())
    waited = time.monotonic() - started
    t.join()
    assert admitted.allowed and admitted.reservation_id and 0.25 <= waited < 4, waited
    held.append(admitted)

    async def admit_async() -> tuple[object, float]:
        t = release_one_later()
        started = time.monotonic()
        adm = await gate.admit(call())
        waited = time.monotonic() - started
        await asyncio.to_thread(t.join)
        return adm, waited

    adm, waited = asyncio.run(admit_async())
    assert getattr(adm, "allowed", False) and 0.25 <= waited < 4, waited
    # nothing settles: both faces give up after wait_s with the short Retry-After
    gate.wait_s = 0.5
    started = time.monotonic()
    refused = gate.admit_sync(call())
    assert not refused.allowed and refused.held_by_inflight and refused.retry_after_s == 2
    assert time.monotonic() - started >= 0.5
    refused = asyncio.run(gate.admit(call()))
    assert not refused.allowed and refused.held_by_inflight
    enf.close()


def test_calls_without_an_agent_are_admitted_from_the_lease_without_the_store(tmp_path: Path) -> None:
    """Only an agent can be paused: a call without one never waits for the pause list, so once
    the lease holds budget it is admitted in-process (no thread hop, no store round trip)."""
    enf, _ = make(
        tmp_path, "budgets:\n  daily_limit_usd: 1000\n", Clock(datetime(2026, 3, 4, 12, tzinfo=UTC))
    )
    first = enf.admit(call())  # the first call takes the lease from the store
    assert first.allowed and first.reservation_id
    assert enf.cached_pauses() is None  # nothing has read the pause list: no agent asked
    later = [enf.admit_local(call()) for _ in range(5)]
    assert all(a is not None and a.allowed and a.reservation_id for a in later)
    # with an agent, the pause list is read first (one store read a second), then the lease
    assert enf.admit_local(call(agent="bot")) is None
    enf.paused()
    agent_call = enf.admit_local(call(agent="bot"))
    assert agent_call is not None and agent_call.allowed
