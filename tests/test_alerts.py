"""Notices: stored for the dashboard, posted to webhooks (JSON and Slack) with retries, never blocking."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from llmbudget.alerts import Notice, Notifier, WebhookSender, list_notifications
from llmbudget.budget.config import WebhookConfig
from llmbudget.store import open_ledger


class FlakyHook:
    """A real aiohttp server on 127.0.0.1 that fails the first attempt on each path, then accepts."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.attempts: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def handle(request: web.Request) -> web.Response:
            path = request.path
            self.attempts[path] = self.attempts.get(path, 0) + 1
            if self.attempts[path] == 1:
                return web.Response(status=503, text="try later")
            self.received.append((path, await request.json()))
            return web.Response(text="ok")

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", handle)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def __enter__(self) -> FlakyHook:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def hook() -> Iterator[FlakyHook]:
    with FlakyHook() as h:
        yield h


def notice() -> Notice:
    return Notice(
        kind="budget_warning",
        budget="daily",
        scope=None,
        spent_usd=Decimal("4.00"),
        limit_usd=Decimal("5.00"),
        threshold=0.8,
        reset="2025-06-02 00:00 UTC",
        message="Budget 'daily' is at 80%: $4.0000 of $5.00 (warning at 80%); resets 2025-06-02 00:00 UTC.",
    )


def test_webhooks_json_and_slack_are_retried_after_a_failure(hook: FlakyHook, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{hook.port}"
    sender = WebhookSender(backoff_s=0.05)
    hooks = [
        WebhookConfig(url=f"{base}/generic", format="json"),
        WebhookConfig(url=f"{base}/slack", format="slack"),
    ]
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}", audit=False) as ledger:
        n = Notifier(ledger, hooks, sender=sender)
        n.notify(notice())
        assert sender.wait_idle(20)
        stored = list_notifications(ledger)
    sender.close()
    assert hook.attempts == {"/generic": 2, "/slack": 2}
    bodies = dict(hook.received)
    assert bodies["/generic"] == {
        "kind": "budget_warning",
        "budget": "daily",
        "scope": None,
        "spent_usd": "4.00",
        "limit_usd": "5.00",
        "threshold": 0.8,
        "reset": "2025-06-02 00:00 UTC",
        "message": notice().message,
    }
    assert bodies["/slack"] == {"text": notice().message}
    assert sender.delivered == 2 and sender.failed == 0
    assert [s["kind"] for s in stored] == ["budget_warning"]


def test_a_dead_webhook_gives_up_and_never_raises(tmp_path: Path) -> None:
    from fakes.servers import free_port

    sender = WebhookSender(backoff_s=0.01)
    n = Notifier(
        None, [WebhookConfig(url=f"http://127.0.0.1:{free_port()}/x", retries=2, timeout_s=1)], sender=sender
    )
    n.notify(notice())  # returns at once; delivery happens in the background
    assert sender.wait_idle(20)
    sender.close()
    assert (sender.delivered, sender.failed) == (0, 1)


def test_notifications_are_newest_first_and_pruned(tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}", audit=False) as ledger:
        n = Notifier(ledger, [], keep=10)
        for i in range(13):
            n.notify(Notice(kind="budget_warning", message=f"m{i}"))
        items = list_notifications(ledger, limit=100)
        assert [x["message"] for x in items] == [f"m{i}" for i in range(12, 2, -1)]
        assert list_notifications(ledger, kind="agent_paused") == []
        n.close()


def test_webhook_url_is_not_logged(hook: FlakyHook, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="llmbudget.alerts")
    sender = WebhookSender(backoff_s=0.01)
    sender.send(f"http://127.0.0.1:{hook.port}/services/SECRET-TOKEN", {"text": "x"})
    assert sender.wait_idle(20)
    sender.close()
    assert hook.attempts["/services/SECRET-TOKEN"] == 2
    assert "SECRET-TOKEN" not in caplog.text and "webhook retry" in caplog.text
