"""Utilization, the floor: pure functions with a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from llmbudget.admission import CallInfo
from llmbudget.budget.config import UtilizationConfig
from llmbudget.budget.factory import build_enforcer
from llmbudget.budget.utilization import Cycle, cycles_from_readings, findings, recommend
from llmbudget.budget.watch import check_utilization
from llmbudget.config import parse_config
from llmbudget.events import UsageEvent
from llmbudget.store import open_ledger

START = datetime(2025, 6, 1, tzinfo=UTC)
END = datetime(2025, 7, 1, tzinfo=UTC)


def cycle(name: str, used: float, elapsed: float) -> Cycle:
    return Cycle(name, "budget", used, elapsed, START, END)


def test_pace_and_projection() -> None:
    c = cycle("a", 0.3, 0.6)
    assert c.pace == 0.5 and c.projected == 0.5 and c.remaining == 0.7
    assert cycle("b", 0.9, 0.5).projected == 1.0  # use stops at the limit
    assert cycle("c", 0.0, 0.0).pace is None


def test_under_use_at_mid_cycle_near_exhaustion_and_conservative_total() -> None:
    cfg = UtilizationConfig()
    found = findings([cycle("claude", 0.3, 0.6), cycle("gpt", 0.97, 0.6)], cfg)
    kinds = {(f.kind, f.cycle) for f in found}
    assert ("utilization_low", "claude") in kinds
    assert ("utilization_exhausted", "gpt") in kinds
    low = next(f for f in found if f.kind == "utilization_low")
    assert "route more work there" in low.message and "30%" in low.message
    ex = next(f for f in found if f.kind == "utilization_exhausted")
    assert "shift load to claude" in ex.message
    # projected (0.5 + 1.0) / 2 = 75%: not conservative at the default 70% floor
    assert not any(f.kind == "utilization_conservative" for f in found)
    found = findings([cycle("claude", 0.2, 0.5), cycle("gpt", 0.3, 0.5)], cfg)
    assert any(f.kind == "utilization_conservative" and "50%" in f.message for f in found)


def test_nothing_to_say_early_in_the_cycle_or_when_disabled() -> None:
    assert findings([cycle("claude", 0.05, 0.2)], UtilizationConfig()) == []
    assert findings([cycle("claude", 0.3, 0.6)], UtilizationConfig(enabled=False)) == []


def test_thresholds_are_configurable() -> None:
    cfg = UtilizationConfig(midcycle=0.7, min_used=0.2, min_projected_total=0.1)
    assert findings([cycle("claude", 0.3, 0.6)], cfg) == []
    assert [f.kind for f in findings([cycle("claude", 0.1, 0.75)], cfg)] == ["utilization_low"]


def test_recommendation_prefers_headroom_per_time_left() -> None:
    assert recommend([cycle("claude", 0.3, 0.6), cycle("gpt", 0.9, 0.6)]) == "→ use claude | avoid gpt"
    assert recommend([]) is None


def test_cycles_from_quota_readings() -> None:
    now = datetime(2025, 6, 5, 12, tzinfo=UTC)
    latest = {
        "claude-max": {
            "timestamp": "2025-06-05T11:00:00Z",
            "backend": "claude-max",
            "windows": {
                "7d": {"utilization": 0.2, "reset": "2025-06-08T12:00:00Z"},
                "5h": {"utilization": 0.9, "reset": "2025-06-05T14:00:00Z"},
            },
        },
        "stale": {
            "timestamp": "2025-05-01T00:00:00Z",
            "windows": {"7d": {"utilization": 0.1, "reset": "2025-05-03T00:00:00Z"}},
        },
        "nodata": {"timestamp": "2025-06-05T11:00:00Z", "windows": {"7d": {"utilization": None}}},
    }
    [c] = cycles_from_readings(latest, now)
    assert c.name == "claude-max 7d" and c.source == "quota"
    assert c.elapsed == (now - (datetime(2025, 6, 8, 12, tzinfo=UTC) - timedelta(days=7))) / timedelta(days=7)
    assert [f.kind for f in findings([c], UtilizationConfig())] == [
        "utilization_low",
        "utilization_conservative",
    ]


def test_committed_budget_alerts_once_per_cycle(tmp_path: Path) -> None:
    text = (
        "backends:\n  claude: {kind: anthropic, base_url: https://api.anthropic.com}\n"
        "budgets:\n  timezone: UTC\n  limits:\n"
        "    - {name: plan, scope: backend, match: claude, limit_usd: 100, period: month, action: alert,"
        " committed: true}\n"
    )
    cfg, _ = parse_config(text, "x.yaml")
    db = f"sqlite:///{tmp_path / 'l.db'}"
    now = datetime(2025, 6, 20, tzinfo=UTC)  # 63% of June gone
    with open_ledger(db, audit=False) as ledger:
        enf = build_enforcer(cfg, db, state=ledger, price_fn=lambda *a: None, clock=lambda: now)
        a = enf.admit(CallInfo("claude", "anthropic", "anthropic", "m", 10, 10))
        from decimal import Decimal

        enf.settle(a, UsageEvent(backend="claude", model="m", cost_usd=Decimal(10), price_status="priced"))
        first = check_utilization(enf, ledger, UtilizationConfig(), now)
        again = check_utilization(enf, ledger, UtilizationConfig(), now + timedelta(hours=1))
        assert [f.kind for f in first] == ["utilization_low", "utilization_conservative"]
        assert again == []
        kinds = sorted(n["kind"] for n in ledger.list_state("notifications").values())
        assert kinds == ["utilization_conservative", "utilization_low"]
        enf.close()
