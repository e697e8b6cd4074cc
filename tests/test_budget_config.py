"""The `budgets:` block: accepted verbatim, precise errors; windows in the configured timezone."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbudget.budget.rules import budgets_from_config
from llmbudget.budget.windows import format_reset, window_for
from llmbudget.config import parse_config
from llmbudget.errors import ConfigError

BACKENDS = """backends:
  claude: {kind: anthropic, base_url: https://api.anthropic.com}
  gpt: {kind: openai, base_url: https://api.openai.com}
  ollama: {kind: openai, base_url: http://127.0.0.1:11434, local: true}
"""
VERBATIM = """budgets:
  daily_limit_usd: 5.00
  monthly_limit_usd: 50.00
  per_backend:
    claude: 20.00/month
    gpt: 10.00/month
  warning_threshold: 0.8
  hard_stop: true
"""


def test_the_verbatim_block_is_accepted() -> None:
    cfg, _ = parse_config(BACKENDS + VERBATIM, "llmbudget.yaml")
    assert cfg.budgets is not None
    got = {
        (b.name, b.scope, b.match, b.limit, b.period, b.warn, b.action)
        for b in budgets_from_config(cfg.budgets)
    }
    assert got == {
        ("daily", "global", None, 5_000_000_000, "day", (0.8,), "block"),
        ("monthly", "global", None, 50_000_000_000, "month", (0.8,), "block"),
        ("backend:claude/month", "backend", "claude", 20_000_000_000, "month", (0.8,), "block"),
        ("backend:gpt/month", "backend", "gpt", 10_000_000_000, "month", (0.8,), "block"),
    }


def test_full_form_with_limits_fallback_and_timezone() -> None:
    text = (
        BACKENDS
        + VERBATIM
        + """  timezone: Europe/Berlin
  fallback: ollama
  fallback_model: llama3.2
  limits:
    - {scope: agent, match: planner, limit_usd: 1.50, period: 5h, warn: [0.5, 0.8], action: pause}
    - {scope: team, limit_tokens: 2000000, period: 7d, action: alert, committed: true}
    - {name: per-session, scope: session, limit_usd: 0.25, period: session}
"""
    )
    cfg, _ = parse_config(text, "llmbudget.yaml")
    b = cfg.budgets
    assert b is not None and b.fallback == "ollama" and b.timezone == "Europe/Berlin"
    budgets = {x.name: x for x in budgets_from_config(b)}
    assert budgets["daily"].action == "fallback"  # hard_stop with a fallback backend
    assert budgets["agent:planner:5h"].limit == 1_500_000_000 and budgets["agent:planner:5h"].warn == (
        0.5,
        0.8,
    )
    team = budgets["team:each:168h"]
    assert team.unit == "tokens" and team.limit == 2_000_000 and team.committed and not team.hard
    assert budgets["per-session"].period == "session"


def test_hard_stop_false_makes_the_short_form_alert_only() -> None:
    cfg, _ = parse_config(BACKENDS + VERBATIM.replace("hard_stop: true", "hard_stop: false"), "x.yaml")
    assert cfg.budgets is not None
    assert {b.action for b in budgets_from_config(cfg.budgets)} == {"alert"}


@pytest.mark.parametrize(
    ("edit", "line", "needles"),
    [
        (
            ("20.00/month", "20.00/mnth"),
            9,
            ["budgets.per_backend.claude", "'mnth'", "day, week, month, session", "5h"],
        ),
        (
            ("gpt: 10.00", "gtp: 10.00"),
            10,
            ["budgets.per_backend.gtp", "unknown backend 'gtp'", "claude, gpt, ollama"],
        ),
        (("20.00/month", "twenty/month"), 9, ["budgets.per_backend.claude", "amount"]),
        (("daily_limit_usd: 5.00", "daily_limit_usd: -5"), 6, ["budgets.daily_limit_usd", "non-negative"]),
        (("monthly_limit_usd: 50.00", "monthly_limit_usd: fifty"), 7, ["budgets.monthly_limit_usd", "20.00"]),
        (
            ("monthly_limit_usd: 50.00", "monthly_limit_usd: 1e400"),
            7,
            ["budgets.monthly_limit_usd", "at most $1,000,000,000"],
        ),
        (("warning_threshold: 0.8", "warning_threshold: 80"), 11, ["warning_threshold", "(0, 1]"]),
        (
            ("hard_stop: true", "hard_stop: true\n  fallback: gpt"),
            13,
            ["budgets.fallback", "local: true", "ollama"],
        ),
        (
            ("hard_stop: true", "hard_stop: true\n  fallback: nope"),
            13,
            ["unknown backend 'nope'", "claude, gpt, ollama"],
        ),
        (("hard_stop: true", "hard_stop: true\n  timezone: Mars/Olympus"), 13, ["budgets.timezone", "IANA"]),
        (
            (
                "hard_stop: true",
                "hard_stop: true\n  limits:\n    - {scope: agent, limit_usd: 1, period: fortnight}",
            ),
            14,
            ["budgets.limits.0.period", "'fortnight'", "day, week, month"],
        ),
        (
            ("hard_stop: true", "hard_stop: true\n  limits:\n    - {scope: planet, limit_usd: 1}"),
            14,
            ["budgets.limits.0.scope", "'global'", "'task_type'"],
        ),
        (
            ("hard_stop: true", "hard_stop: true\n  limits:\n    - {scope: agent, period: day}"),
            14,
            ["budgets.limits.0", "exactly one of limit_usd or limit_tokens"],
        ),
        (
            (
                "hard_stop: true",
                "hard_stop: true\n  limits:\n    - {scope: backend, match: gtp, limit_usd: 1}",
            ),
            14,
            ["budgets.limits.0.match", "unknown backend 'gtp'"],
        ),
        (
            (
                "hard_stop: true",
                "hard_stop: true\n  limits:\n    - {scope: agent, limit_usd: 1, action: fallback}",
            ),
            14,
            ["budgets.limits.0.action", "budgets.fallback"],
        ),
        (
            (
                "hard_stop: true",
                "hard_stop: true\n  limits:\n    - {scope: agent, limit_usd: 1, colour: red}",
            ),
            14,
            ["unknown key 'colour'", "valid keys: action, committed"],
        ),
    ],
)
def test_errors_name_file_line_key_and_the_valid_choices(
    edit: tuple[str, str], line: int, needles: list[str]
) -> None:
    text = BACKENDS + VERBATIM.replace(*edit)
    with pytest.raises(ConfigError) as e:
        parse_config(text, "llmbudget.yaml")
    msg = str(e.value)
    assert msg.startswith(f"llmbudget.yaml:{line}: "), msg
    for n in needles:
        assert n in msg, msg


def test_alerts_block_with_webhooks_and_utilization() -> None:
    text = (
        BACKENDS
        + VERBATIM
        + """alerts:
  webhooks:
    - {url: https://hooks.example.com/llm, format: json}
    - {url: https://hooks.slack.com/services/T/B/X, format: slack}
  utilization: {midcycle: 0.6, min_used: 0.4, min_projected_total: 0.8}
"""
    )
    cfg, _ = parse_config(text, "x.yaml")
    assert cfg.alerts is not None
    assert [w.format for w in cfg.alerts.webhooks] == ["json", "slack"]
    assert cfg.alerts.utilization.midcycle == 0.6
    with pytest.raises(ConfigError) as e:
        parse_config(text.replace("format: slack", "format: teams"), "x.yaml")
    assert "x.yaml:16: alerts.webhooks.1.format" in str(e.value) and "'json' or 'slack'" in str(e.value)


BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("now", "period", "start", "end"),
    [
        # spring forward: the day of 2025-03-30 has 23 hours in Berlin
        (
            datetime(2025, 3, 30, 12, tzinfo=UTC),
            "day",
            datetime(2025, 3, 29, 23, tzinfo=UTC),
            datetime(2025, 3, 30, 22, tzinfo=UTC),
        ),
        # fall back: 2025-10-26 has 25 hours
        (
            datetime(2025, 10, 26, 12, tzinfo=UTC),
            "day",
            datetime(2025, 10, 25, 22, tzinfo=UTC),
            datetime(2025, 10, 26, 23, tzinfo=UTC),
        ),
        # 23:30 UTC on the 31st is already April 1st in Berlin
        (
            datetime(2025, 3, 31, 22, 30, tzinfo=UTC),
            "month",
            datetime(2025, 3, 31, 22, tzinfo=UTC),
            datetime(2025, 4, 30, 22, tzinfo=UTC),
        ),
        (
            datetime(2024, 12, 31, 23, 30, tzinfo=UTC),
            "month",
            datetime(2024, 12, 31, 23, tzinfo=UTC),
            datetime(2025, 1, 31, 23, tzinfo=UTC),
        ),
        # ISO week, Monday start, across the DST change
        (
            datetime(2025, 3, 30, 12, tzinfo=UTC),
            "week",
            datetime(2025, 3, 23, 23, tzinfo=UTC),
            datetime(2025, 3, 30, 22, tzinfo=UTC),
        ),
    ],
)
def test_calendar_windows_in_the_configured_timezone(
    now: datetime, period: str, start: datetime, end: datetime
) -> None:
    w = window_for(period, now, BERLIN)
    assert w is not None and (w.start, w.end) == (start, end)


def test_window_keys_change_exactly_at_local_midnight() -> None:
    before = window_for("day", datetime(2025, 6, 1, 21, 59, 59, tzinfo=UTC), BERLIN)
    after = window_for("day", datetime(2025, 6, 1, 22, 0, 0, tzinfo=UTC), BERLIN)
    assert before is not None and after is not None
    assert (before.key, after.key) == ("day:2025-06-01", "day:2025-06-02")
    assert format_reset(before.reset, BERLIN) == "2025-06-02 00:00 CEST"


def test_rolling_window_covers_at_least_its_hours() -> None:
    now = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    w = window_for("5h", now, BERLIN)
    assert w is not None and w.start is not None and w.end is not None
    assert w.start <= datetime(2025, 6, 1, 7, 30, tzinfo=UTC)  # never under-counts the last 5 hours
    assert len(w.read_keys) == 6 and w.key == w.read_keys[-1]
    assert w.end > now
    week = window_for("168h", now, BERLIN)
    assert week is not None and len(week.read_keys) <= 26  # coarse buckets for long windows


def test_session_window_needs_a_session() -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    assert window_for("session", now, BERLIN) is None
    w = window_for("session", now, BERLIN, session="s1")
    assert w is not None and w.key == "session:s1" and w.reset is None
    assert format_reset(None, BERLIN) == "the session ends"


def test_per_backend_bare_number_means_per_month() -> None:
    cfg, _ = parse_config(BACKENDS + VERBATIM.replace("20.00/month", "20"), "x.yaml")
    assert cfg.budgets is not None
    assert cfg.budgets.per_backend["claude"].period == "month"
    assert cfg.budgets.per_backend["claude"].limit_usd == Decimal(20)


@settings(max_examples=300, deadline=None)
@given(
    times=st.lists(
        st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)),
        min_size=1,
        max_size=12,
    ),
    period=st.sampled_from(["day", "week", "month", "1h", "5h", "25h", "36h", "168h"]),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata", "America/St_Johns", "Australia/Lord_Howe"]),
)
def test_a_remembered_window_is_the_window_worked_out_afresh(
    times: list[datetime], period: str, zone: str
) -> None:
    """Calls ask for the same window all day, so the last one is remembered: whatever came before,
    the window for a moment is the one worked out with nothing remembered."""
    from llmbudget.budget import windows

    tz = ZoneInfo(zone)
    for now in times:  # each call after the others: the remembered window is the previous call's
        remembered = window_for(period, now, tz)
        windows._calendar.clear()
        windows._rolling.clear()
        assert remembered == window_for(period, now, tz)
        assert remembered is not None and remembered.start is not None and remembered.end is not None
        assert remembered.start <= now < remembered.end
