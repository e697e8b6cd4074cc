"""Importing Claude Code logs into a real ledger (SQLite and PostgreSQL) priced by the real PriceBook."""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path

from llmbudget.pricing import PriceBook
from llmbudget.quota import claude_code as cc
from llmbudget.store import open_ledger

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"


def _sonnet_45(inp: int, out: int, cw: int, cr: int) -> Decimal:
    # Claude Sonnet 4.5 list prices per million tokens: input 3, output 15, cache write 3.75, cache read 0.30
    return (
        Decimal(inp) * 3 + Decimal(out) * 15 + Decimal(cw) * Decimal("3.75") + Decimal(cr) * Decimal("0.30")
    ) / 1_000_000


def test_priced_with_the_price_book() -> None:
    events, _ = cc.load_events([FIXTURES], prices=PriceBook())
    by_id = {e.id: e for e in events}
    a = by_id[cc.event_id_for("msg_01WebA", "req_01WebA")]
    assert a.price_status == "priced"
    assert a.cost_usd == _sonnet_45(12, 410, 4200, 11800)
    unknown = by_id[cc.event_id_for("msg_03ApiH", "req_03ApiH")]
    assert unknown.model == "claude-fable-9"
    assert unknown.price_status == "unpriced" and unknown.cost_usd is None  # never $0
    # the price book knows the model, so the cost Claude Code once logged is not used
    notes = by_id[cc.event_id_for("msg_04NotesI", None)]
    assert notes.cost_usd == _sonnet_45(900, 300, 0, 0)
    assert "cost_source" not in notes.tags


def test_import_is_idempotent(ledger_url: str, tmp_path: Path) -> None:
    logs = tmp_path / "claude"
    shutil.copytree(FIXTURES, logs)
    prices = PriceBook()
    with open_ledger(ledger_url, audit=False) as ledger:
        first = cc.import_claude_code(ledger, [logs], prices)
        assert (first.responses, first.new, first.already_imported) == (9, 9, 0)
        assert first.unpriced == 1 and first.sessions == 4
        assert first.projects == [
            "/home/alice/code/api-server",
            "/home/alice/code/webapp",
            "/home/alice/notes",
        ]
        again = cc.import_claude_code(ledger, [logs], prices)
        assert (again.new, again.already_imported) == (0, 9)
        assert ledger.count(filters={"backend": "claude-code"}) == 9
        stored = ledger.get(cc.event_id_for("msg_01WebA", "req_01WebA"))
        assert stored is not None
        assert (
            stored.input_tokens,
            stored.cached_input_tokens,
            stored.cache_write_tokens,
            stored.output_tokens,
        ) == (12 + 4200 + 11800, 11800, 4200, 410)
        assert stored.session == "5f0c8a8e-1b1e-4c35-9a51-0d6a3b7f1a01"
        assert stored.tags["project"] == "/home/alice/code/webapp"
        # a new response appended to a session log is the only thing the next import adds
        log = logs / "projects" / "-home-alice-notes" / "c0ffee00-1111-4222-8333-444455556604.jsonl"
        line = (
            log.read_text()
            .splitlines()[1]
            .replace("msg_04NotesI", "msg_04NotesJ")
            .replace("2026-11-18T20:31:00", "2026-11-18T20:45:00")
        )
        with log.open("a") as fh:
            fh.write(line + "\n")
        third = cc.import_claude_code(ledger, [logs], prices)
        assert (third.responses, third.new) == (10, 1)
        total = ledger.costs(since=None, until=None, filters={"backend": "claude-code"})
        assert total[0].calls == 10 and total[0].unpriced_calls == 1
