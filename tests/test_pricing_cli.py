"""`llmbudget prices` and `llmbudget reprice` against a real ledger (SQLite, and PostgreSQL for reprice)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from genai_prices import Usage, calc_price

from llmbudget.cli import main
from llmbudget.config import parse_config
from llmbudget.events import UsageEvent
from llmbudget.money import from_nano, to_nano
from llmbudget.store import open_ledger

CONFIG = """\
backends:
  ollama: {kind: openai, base_url: "http://127.0.0.1:11434", local: true}
pricing:
  - model: acme-llm
    input_mtok: 2
    output_mtok: 10
    cache_read_mtok: 0.5
    effective_from: 2025-07-01
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    # not ./llmbudget.yaml (the cwd), which would be picked up without --config
    (tmp_path / "conf").mkdir()
    p = tmp_path / "conf" / "prices.yaml"
    p.write_text(CONFIG)
    return p


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def ev(
    model: str, day: int, *, month: int = 7, provider: str = "unknown", backend: str = "api", **kw: Any
) -> UsageEvent:
    return UsageEvent(
        backend=backend,
        model=model,
        provider=provider,
        timestamp=datetime(2025, month, day, 12, tzinfo=UTC),
        **kw,
    )


# ---------------------------------------------------------------- prices MODEL


def test_prices_model_json_matches_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "prices", "gpt-4o", "--provider", "openai", "--at", "2025-09-01", "--json")
    assert code == 0
    data = json.loads(out)
    at = datetime(2025, 9, 1, tzinfo=UTC)
    per_m_in = calc_price(
        Usage(input_tokens=1_000_000), "gpt-4o", provider_id="openai", genai_request_timestamp=at
    ).total_price
    per_m_out = calc_price(
        Usage(output_tokens=1_000_000), "gpt-4o", provider_id="openai", genai_request_timestamp=at
    ).total_price
    assert Decimal(data["input_mtok"]) == per_m_in and Decimal(data["output_mtok"]) == per_m_out
    assert data["status"] == "priced" and data["source"].startswith("genai-prices ")


def test_prices_table_shows_tiers_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "prices", "gemini-2.5-pro")
    assert code == 0
    assert "genai-prices" in out and "200,000" in out and "$1.25" in out


def test_prices_dated_change_shows_the_old_price_at_an_old_date(capsys: pytest.CaptureFixture[str]) -> None:
    _, before, _ = run(capsys, "prices", "o3", "--at", "2025-06-01", "--json")
    _, after, _ = run(capsys, "prices", "o3", "--at", "2025-06-11", "--json")
    b, a = json.loads(before), json.loads(after)
    assert Decimal(b["input_mtok"]) > Decimal(a["input_mtok"])
    assert b["next_change"].startswith("2025-06-10")


def test_prices_override_source_and_date(capsys: pytest.CaptureFixture[str], cfg_path: Path) -> None:
    code, out, _ = run(
        capsys, "prices", "acme-llm", "--config", str(cfg_path), "--at", "2025-07-02", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["status"] == "override" and data["source"] == "override: acme-llm from 2025-07-01"
    assert data["input_mtok"] == "2" and data["effective_from"] == "2025-07-01"
    code, out, _ = run(capsys, "prices", "acme-llm", "--config", str(cfg_path), "--at", "2025-06-30")
    assert code == 1 and "unpriced" in out


def test_prices_unknown_model_explains_and_gives_a_working_snippet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "prices", "acme: weird/model", "--provider", "openai")
    assert code == 1
    assert "unpriced" in out and "never $0" in out and "llmbudget reprice" in out
    snippet = out[out.index("pricing:") :]
    cfg, _ = parse_config(snippet)  # the YAML shown is a valid config as printed
    assert cfg.pricing[0].model == "acme: weird/model" and cfg.pricing[0].provider == "openai"
    code, out, _ = run(capsys, "prices", "acme-unknown", "--json")
    data = json.loads(out)
    assert code == 1 and data["status"] == "unpriced"
    assert yaml.safe_load(data["add_override"])["pricing"][0]["model"] == "acme-unknown"


def test_prices_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "prices")
    assert code == 1 and "MODEL" in err
    code, _, err = run(capsys, "prices", "gpt-4o", "--at", "someday")
    assert code == 1 and "--at" in err
    code, _, err = run(capsys, "prices", "gpt-4o", "--missing")
    assert code == 1 and "--missing" in err


# ---------------------------------------------------------------- prices --missing


def test_missing_lists_unpriced_models_with_counts(
    capsys: pytest.CaptureFixture[str], sqlite_url: str, cfg_path: Path
) -> None:
    with open_ledger(sqlite_url) as ledger:
        ledger.record_many(
            [
                *(ev("acme-llm", d, input_tokens=100, output_tokens=10) for d in (2, 3, 4)),
                ev("mystery-9", 5, input_tokens=7, output_tokens=1),
                ev(
                    "gpt-4o",
                    5,
                    provider="openai",
                    input_tokens=10,
                    output_tokens=1,
                    cost_usd=Decimal("0.00003"),
                    price_status="priced",
                ),
            ]
        )
    code, out, _ = run(capsys, "prices", "--missing", "--db", sqlite_url, "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["model"], r["calls"]) for r in rows] == [("acme-llm", 3), ("mystery-9", 1)]
    assert rows[0]["input_tokens"] == 300 and not rows[0]["price_now_available"]
    # with the override configured, `reprice` would now price acme-llm
    code, out, _ = run(capsys, "prices", "--missing", "--db", sqlite_url, "--config", str(cfg_path), "--json")
    assert [r["price_now_available"] for r in json.loads(out)] == [True, False]
    code, out, _ = run(capsys, "prices", "--missing", "--db", sqlite_url)
    assert code == 0 and "acme-llm" in out and "mystery-9" in out and "gpt-4o" not in out
    code, out, _ = run(capsys, "prices", "--missing", "--db", sqlite_url, "--csv")
    import csv

    table = list(csv.DictReader(out.splitlines()))
    assert code == 0 and [(r["model"], r["calls"]) for r in table] == [("acme-llm", "3"), ("mystery-9", "1")]


def test_prices_model_as_csv(capsys: pytest.CaptureFixture[str], cfg_path: Path) -> None:
    import csv

    code, out, _ = run(capsys, "prices", "gpt-4o", "--csv")
    [row] = list(csv.DictReader(out.splitlines()))
    assert code == 0 and row["model"] == "gpt-4o" and row["status"] == "priced"
    assert Decimal(row["input_mtok"]) > 0 and row["source"].startswith("genai-prices")
    code, out, _ = run(capsys, "prices", "no-such-model-xyz", "--csv")
    [row] = list(csv.DictReader(out.splitlines()))
    assert code == 1 and row["status"] == "unpriced" and "no-such-model-xyz" in row["add_override"]
    code, _, err = run(capsys, "prices", "gpt-4o", "--csv", "--json")
    assert code == 1 and "--csv" in err


def test_missing_on_an_empty_ledger(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    code, out, _ = run(capsys, "prices", "--missing", "--db", sqlite_url)
    assert code == 0 and "Every recorded call is priced" in out


# ---------------------------------------------------------------- reprice


def _acme_cost(inp: int, cached: int, out: int) -> Decimal:
    # the override: $2/M input, $0.5/M cached reads, $10/M output
    return (Decimal(inp - cached) * 2 + Decimal(cached) * Decimal("0.5") + Decimal(out) * 10) / 1_000_000


def test_reprice_prices_unpriced_events_at_their_own_time(
    capsys: pytest.CaptureFixture[str], ledger_url: str, cfg_path: Path
) -> None:
    june = ev("acme-llm", 20, month=6, input_tokens=1000, output_tokens=100)
    july = ev("acme-llm", 2, input_tokens=5000, cached_input_tokens=4000, output_tokens=300)
    aug = ev("acme-llm", 2, month=8, input_tokens=10, output_tokens=1)
    other = ev("mystery-9", 3, input_tokens=5, output_tokens=5)
    local = ev("llama3", 3, backend="ollama", input_tokens=5, output_tokens=5)
    with open_ledger(ledger_url) as ledger:
        ledger.record_many([june, july, aug, other, local])

    # dry run: reports, writes nothing
    code, out, _ = run(
        capsys, "reprice", "--db", ledger_url, "--config", str(cfg_path), "--dry-run", "--json"
    )
    assert code == 0
    res = json.loads(out)
    # acme-llm in July and August get the override; the call on the local backend becomes `local`
    assert (res["examined"], res["changed"], res["newly_priced"], res["written"]) == (5, 3, 2, 0)
    with open_ledger(ledger_url) as ledger:
        assert ledger.get(july.id).price_status == "unpriced"  # type: ignore[union-attr]

    # --since limits the range
    code, out, _ = run(
        capsys, "reprice", "--db", ledger_url, "--config", str(cfg_path), "--since", "2025-08-01", "--json"
    )
    assert json.loads(out)["newly_priced"] == 1
    code, out, _ = run(capsys, "reprice", "--db", ledger_url, "--config", str(cfg_path))
    assert code == 0 and "newly priced" in out and "mystery-9" in out
    with open_ledger(ledger_url) as ledger:
        got = {e.id: ledger.get(e.id) for e in (june, july, aug, other, local)}
        # before the override's date there is still no price: history is not rewritten
        assert got[june.id].price_status == "unpriced" and got[june.id].cost_usd is None  # type: ignore[union-attr]
        assert got[july.id].price_status == "override"  # type: ignore[union-attr]
        assert got[july.id].cost_usd == _acme_cost(5000, 4000, 300)  # type: ignore[union-attr]
        assert got[aug.id].cost_usd == _acme_cost(10, 0, 1)  # type: ignore[union-attr]
        assert got[other.id].price_status == "unpriced"  # type: ignore[union-attr]
        assert got[local.id].price_status == "local" and got[local.id].cost_usd == 0  # type: ignore[union-attr]
        assert {m.model: m.calls for m in ledger.unpriced_models()} == {"acme-llm": 1, "mystery-9": 1}
        total = ledger.costs(since=None, until=None)
        assert total[0].cost_nano == to_nano(_acme_cost(5000, 4000, 300)) + to_nano(_acme_cost(10, 0, 1))
    # a second run changes nothing
    code, out, _ = run(capsys, "reprice", "--db", ledger_url, "--config", str(cfg_path), "--json")
    assert json.loads(out)["changed"] == 0


def test_reprice_all_rewrites_from_the_current_book(
    capsys: pytest.CaptureFixture[str], sqlite_url: str, cfg_path: Path
) -> None:
    at = datetime(2025, 9, 1, 12, tzinfo=UTC)
    stale = UsageEvent(
        backend="oa",
        model="gpt-4o",
        provider="openai",
        timestamp=at,
        input_tokens=2000,
        cached_input_tokens=1000,
        output_tokens=500,
        cost_usd=Decimal("9"),
        price_status="priced",
    )
    local = UsageEvent(
        backend="gone",
        model="llama3",
        provider="unknown",
        timestamp=at,
        input_tokens=1,
        cost_usd=Decimal(0),
        price_status="local",
    )
    with open_ledger(sqlite_url) as ledger:
        ledger.record_many([stale, local])
    # without --all, priced events are left alone
    code, out, _ = run(capsys, "reprice", "--db", sqlite_url, "--json")
    assert code == 0 and json.loads(out)["examined"] == 0
    code, out, _ = run(capsys, "reprice", "--all", "--db", sqlite_url, "--config", str(cfg_path), "--json")
    assert code == 0
    res = json.loads(out)
    expected = calc_price(
        Usage(input_tokens=2000, cache_read_tokens=1000, output_tokens=500),
        "gpt-4o",
        provider_id="openai",
        genai_request_timestamp=at,
    ).total_price
    assert res["changed"] == 1 and res["cost_delta_nano"] == to_nano(expected) - to_nano(Decimal(9))
    with open_ledger(sqlite_url) as ledger:
        assert ledger.get(stale.id).cost_usd == from_nano(to_nano(expected))  # type: ignore[union-attr]
        assert ledger.get(local.id).price_status == "local"  # type: ignore[union-attr]


def test_reprice_bad_range(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    code, _, err = run(
        capsys, "reprice", "--db", sqlite_url, "--since", "2025-09-02", "--until", "2025-08-31"
    )
    assert code == 1 and "--until" in err
