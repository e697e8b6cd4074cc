"""The dashboard in a real browser (Playwright driving Debian's chromium, headless) against
`llmbudget serve` run as its own process, with calls made through it by the official openai SDK.

Screenshots of each step go to the test's tmp dir. `LLMBUDGET_UPDATE_SCREENSHOT=1` also writes
the overview to docs/dashboard.png (the README's picture).
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from fakes.upstream import FakeUpstream
from playwright.sync_api import Page, expect
from serving import serve

from llmbudget.events import UsageEvent
from llmbudget.store import open_ledger

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def _config(tmp: Path, fake: FakeUpstream, extra: str = "") -> Path:
    cfg = tmp / "llmbudget.yaml"
    cfg.write_text(
        "timezone: UTC\n"
        f"backends:\n  openai: {{kind: openai, base_url: {fake.url}, provider: openai}}\n"
        f"  anthropic: {{kind: anthropic, base_url: {fake.url}, provider: anthropic}}\n"
        "storage:\n  flush_interval_s: 0.1\n"
        "budgets:\n  daily_limit_usd: 20.00\n  monthly_limit_usd: 120.00\n"
        "  per_backend:\n    anthropic: 40.00/month\n" + extra
    )
    return cfg


def _history(db: str) -> None:
    """A month of earlier traffic, so the charts and forecast have something to draw."""
    now = datetime.now(UTC)
    models = [
        ("openai", "openai", "gpt-4o"),
        ("anthropic", "anthropic", "claude-sonnet-4-5"),
        ("openai", "openai", "gpt-4o-mini"),
    ]
    events = []
    for day in range(1, 30):
        for i in range(6):
            backend, provider, model = models[(day + i) % 3]
            events.append(
                UsageEvent(
                    timestamp=now - timedelta(days=day, hours=i * 3),
                    backend=backend,
                    provider=provider,
                    model=model,
                    input_tokens=20_000 + 1_000 * i,
                    output_tokens=2_000 + 50 * day,
                    cost_usd=Decimal("0.05") * (1 + (day * 7 + i) % 5),
                    price_status="priced",
                    agent=("researcher", "coder", "reviewer")[i % 3],
                    session=f"old-{day}-{i % 2}",
                    tier=("gold", "standard")[i % 2],
                )
            )
    with open_ledger(db) as ledger:
        ledger.record_many(events)


def _sdk(base: str, agent: str, session: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base}/openai/v1",
        api_key="sk-test",
        default_headers={"X-LLMBudget-Agent": agent, "X-LLMBudget-Session": session},
        max_retries=0,
    )


def _chat(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def _live(page: Page) -> None:
    expect(page.locator("#live")).to_contain_text("live", timeout=5000)


def test_dashboard_live_threshold_pause_and_csv(page: Page, fake: FakeUpstream, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    _history(db)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with serve(_config(tmp_path, fake), db, log=tmp_path / "serve.log") as base:
        page.goto(base + "/")
        _live(page)
        page.evaluate("window.__noReload = true")
        before = page.locator("#today-calls").inner_text()
        planner = _sdk(base, "planner", "sess-A")

        # a call shows up as a new card and in the totals, without a reload
        t0 = time.monotonic()
        _chat(planner)
        card = page.locator('article.card[data-agent="planner"]')
        expect(card).to_be_visible(timeout=3000)
        expect(card.locator('[data-f="tokens"]')).to_have_text("1,500", timeout=3000)
        expect(page.locator("#today-calls")).not_to_have_text(before, timeout=2000)
        assert time.monotonic() - t0 < 3
        # the next one updates the same card in place within a second
        _chat(planner)
        expect(card.locator('[data-f="tokens"]')).to_have_text("3,000", timeout=1000)
        # the month-end projection moves with the month's spend: never below what is already spent
        month = int(page.locator("#month-cost").get_attribute("data-nano") or 0)
        projected = int(page.locator("#projected").get_attribute("data-nano") or 0)
        assert month > 0 and projected >= month, (month, projected)
        cpr = card.locator('[data-f="cpr"]').inner_text()
        assert cpr.startswith("$0.000")
        expect(card.locator(".cpr")).to_have_attribute("title", f"Avg cost/request: {cpr} (last 10 requests)")
        expect(card.locator('[data-f="arrow"]')).to_have_text("→")
        assert page.evaluate("window.__noReload") is True
        for agent, n in (("researcher", 3), ("coder", 2)):
            with _sdk(base, agent, f"sess-{agent}") as c:
                for _ in range(n):
                    _chat(c)
        expect(page.locator('article.card[data-agent="coder"] [data-f="tokens"]')).to_have_text(
            "3,000", timeout=3000
        )
        # a concurrent burst reaches the page summed (one increment per agent per dispatch): the
        # totals and the card still count every call exactly once
        calls_before = int(page.locator("#today-calls").inner_text().replace(",", ""))
        with _sdk(base, "coder", "sess-coder") as c, ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda _: _chat(c), range(30)))
        expect(page.locator('article.card[data-agent="coder"] [data-f="tokens"]')).to_have_text(
            "48,000", timeout=3000
        )
        expect(page.locator("#today-calls")).to_have_text(f"{calls_before + 30:,}", timeout=3000)
        page.screenshot(path=str(shots / "overview.png"), full_page=True)

        # edit a threshold in the Budgets page; the next call crosses it and the notice appears live
        page.goto(base + "/budgets")
        _live(page)
        form = page.locator("#threshold-form")
        form.locator('select[name="scope"]').select_option("session")
        form.locator('input[name="agent"]').fill("planner")
        form.locator('input[name="limit_usd"]').fill("0.0001")
        form.locator('button[type="submit"]').click()
        expect(page.locator("#threshold-msg")).to_contain_text("Saved")
        expect(page.locator('#thresholds tr[data-agent="planner"]')).to_contain_text("session")
        _chat(planner)
        notice = page.locator("#notices li", has_text="threshold")
        expect(notice.first).to_contain_text("'planner'", timeout=3000)
        expect(notice.first).to_contain_text("$0.0001")
        page.screenshot(path=str(shots / "budgets.png"), full_page=True)

        # pause the agent from its card: its next call is refused
        page.goto(base + "/")
        _live(page)
        card = page.locator('article.card[data-agent="planner"]')
        card.locator("button.pause").click()
        expect(card.locator(".flag.pausedflag")).to_be_visible()
        expect(card.locator("button.resume")).to_be_visible()
        with pytest.raises(openai.RateLimitError, match="paused"):
            _chat(planner)
        card.locator("button.resume").click()
        expect(card.locator("button.pause")).to_be_visible()
        _chat(planner)
        page.screenshot(path=str(shots / "paused-resumed.png"), full_page=True)

        # sessions: breakdown on click, CSV download of the same rows
        page.goto(base + "/sessions")
        row = page.locator('tr.srow[data-session="sess-A"]')
        expect(row).to_contain_text("planner")
        row.click()
        expect(page.locator("#bd-rows")).to_contain_text("planner")
        with page.expect_download() as dl:
            page.locator("#csv").click()
        path = dl.value.path()
        rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
        shown = page.locator("#sessions tbody tr").count()
        assert len(rows) == shown == 30
        a = next(r for r in rows if r["session"] == "sess-A")
        assert (
            a["agents"] == "planner" and int(a["tokens"]) == 4 * 1500
        )  # the refused call has no tokens and Decimal(a["cost_usd"]) > 0
        page.screenshot(path=str(shots / "sessions.png"), full_page=True)

        # events: the cost of a call explained
        page.goto(base + "/events?agent=planner")
        expect(page.locator('input[name="agent"]')).to_have_value("planner")
        page.locator('button[data-action="explain"]').first.click()
        box = page.locator(".explainbox").first
        expect(box).to_contain_text("cached input")
        expect(box).to_contain_text("price source: genai-prices")
        page.screenshot(path=str(shots / "events.png"), full_page=True)

        # enforcement health lists the refused call with its reason
        page.goto(base + "/budgets")
        expect(page.locator("section", has_text="Recent refusals")).to_contain_text("is paused")

        # the overview as a newcomer sees it after all this (the README's picture)
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.goto(base + "/")
        _live(page)
        expect(page.locator("#notices")).to_contain_text("threshold")
        page.screenshot(path=str(shots / "overview-end.png"), full_page=True)
        if os.environ.get("LLMBUDGET_UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)


def test_one_page_shows_both_replicas(
    page: Page, fake: FakeUpstream, tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    cfg = _config(tmp_path, fake, f"live:\n  redis_url: {redis_url}\n")
    with serve(cfg, pg_url, log=tmp_path / "a.log") as a, serve(cfg, pg_url, log=tmp_path / "b.log") as b:
        page.goto(a + "/")
        expect(page.locator("#live")).to_contain_text("all replicas", timeout=5000)
        time.sleep(0.3)  # both replicas' Redis listeners subscribed
        with _sdk(a, "on-a", "s-a") as ca, _sdk(b, "on-b", "s-b") as cb:
            _chat(ca)
            _chat(cb)
        for agent in ("on-a", "on-b"):
            expect(page.locator(f'article.card[data-agent="{agent}"] [data-f="tokens"]')).to_have_text(
                "1,500", timeout=3000
            )
        page.screenshot(path=str(tmp_path / "two-replicas.png"), full_page=True)


def test_long_names_stay_inside_their_cards(page: Page, fake: FakeUpstream, tmp_path: Path) -> None:
    """Attribution values may be 256 characters with no space: the page must not grow sideways."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    with serve(_config(tmp_path, fake), db, log=tmp_path / "serve.log") as base:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(base + "/")
        _live(page)
        with _sdk(base, "a" * 256, "s" * 256) as c:
            _chat(c)
        expect(page.locator("article.card").first).to_be_visible(timeout=5000)
        for path in ("/", "/sessions"):
            page.goto(base + path)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} is {overflow}px wider than the window"
