"""Notices: the log, in-app notifications (`GET /api/notifications`, `llmbudget alerts`) and webhooks.

De-duplication (once per budget, threshold and window) is the caller's job through an atomic
claim (`CounterStore.claim_once`), so two proxy processes never both announce the same warning.
Webhooks are posted from one background thread with retries and exponential backoff; a slow or
failing hook never blocks a request.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, TypedDict
from urllib.parse import urlsplit

from .events import new_id, utcnow
from .money import decimal_str
from .store.base import Ledger

log = logging.getLogger("llmbudget.alerts")

NOTIFICATIONS_NS = "notifications"
KINDS = (
    "budget_warning",
    "budget_exhausted",
    "agent_paused",
    "agent_resumed",
    "utilization_low",
    "utilization_exhausted",
    "utilization_conservative",
    "threshold_crossed",
)


class NoticeDict(TypedDict):
    """A notice as stored in the ledger, listed by `GET /api/notifications` and sent to the live pages."""

    id: str
    timestamp: str
    kind: str
    level: str
    budget: str | None
    scope: str | None
    spent_usd: str | None
    limit_usd: str | None
    threshold: float | None
    reset: str | None
    message: str


class Webhook(Protocol):
    """One `alerts.webhooks` entry (`llmbudget.budget.config.WebhookConfig`)."""

    @property
    def url(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def retries(self) -> int: ...
    @property
    def timeout_s(self) -> float: ...


class _Job(TypedDict):
    url: str
    body: Mapping[str, object]
    left: int
    attempt: int
    timeout: float


@dataclass(slots=True)
class Notice:
    """One alert, as shown in the dashboard and sent to webhooks."""

    kind: str
    message: str
    level: str = "warning"
    budget: str | None = None
    scope: str | None = None
    spent_usd: Decimal | None = None
    limit_usd: Decimal | None = None
    threshold: float | None = None
    reset: str | None = None
    id: str = field(default_factory=new_id)
    timestamp: datetime = field(default_factory=utcnow)

    def to_dict(self) -> NoticeDict:
        """JSON-ready: money as decimal strings, time as RFC 3339."""
        return {
            "id": self.id,
            "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
            "kind": self.kind,
            "level": self.level,
            "budget": self.budget,
            "scope": self.scope,
            "spent_usd": None if self.spent_usd is None else decimal_str(self.spent_usd),
            "limit_usd": None if self.limit_usd is None else decimal_str(self.limit_usd),
            "threshold": self.threshold,
            "reset": self.reset,
            "message": self.message,
        }

    def webhook_body(self, fmt: str) -> dict[str, object]:
        """The generic JSON alert body, or Slack's `{"text": ...}`."""
        if fmt == "slack":
            return {"text": self.message}
        d: Mapping[str, object] = self.to_dict()
        return {
            k: d[k]
            for k in ("kind", "budget", "scope", "spent_usd", "limit_usd", "threshold", "reset", "message")
        }


class WebhookSender:
    """Posts JSON to webhooks from one daemon thread; retries with exponential backoff."""

    def __init__(self, *, backoff_s: float = 1.0, max_backoff_s: float = 60.0) -> None:
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._inflight = 0
        #: delivered / given-up counts, for tests and `/metrics`
        self.delivered = 0
        self.failed = 0

    def send(self, url: str, body: Mapping[str, object], *, retries: int = 4, timeout_s: float = 5.0) -> None:
        """Queue one POST; returns at once."""
        job: _Job = {"url": url, "body": body, "left": retries, "attempt": 0, "timeout": timeout_s}
        with self._cv:
            if self._closed:
                return
            heapq.heappush(self._heap, (time.monotonic(), next(self._seq), job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llmbudget-webhooks", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cv.wait(wait)
                if self._closed and not self._heap:
                    return
                _, _, job = heapq.heappop(self._heap)
                self._inflight += 1
            ok, why = self._post(job)
            with self._cv:
                self._inflight -= 1
                if ok:
                    self.delivered += 1
                elif job["left"] > 0 and not self._closed:
                    job["left"] -= 1
                    job["attempt"] += 1
                    delay = min(self.max_backoff_s, self.backoff_s * 2 ** (job["attempt"] - 1))
                    log.info(
                        "webhook retry host=%s attempt=%d in_s=%.1f reason=%s",
                        _host(job["url"]),
                        job["attempt"],
                        delay,
                        why,
                    )
                    heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), job))
                else:
                    self.failed += 1
                    log.warning("webhook gave_up host=%s reason=%s", _host(job["url"]), why)
                self._cv.notify_all()

    @staticmethod
    def _post(job: _Job) -> tuple[bool, str]:
        data = json.dumps(job["body"], default=str).encode()
        req = urllib.request.Request(
            job["url"],
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "llmbudget"},
        )
        try:
            with urllib.request.urlopen(req, timeout=job["timeout"]) as resp:
                return 200 <= resp.status < 300, f"http {resp.status}"
        except urllib.error.HTTPError as e:
            return False, f"http {e.code}"
        except (urllib.error.URLError, OSError) as e:
            return False, type(e).__name__

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until nothing is queued (tests, clean shutdown); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._heap or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
        return True

    def close(self, timeout_s: float = 2.0) -> None:
        """Try to deliver what is due, then stop the thread."""
        self.wait_idle(timeout_s)
        with self._cv:
            self._closed = True
            self._heap.clear()
            self._cv.notify_all()


def _host(url: str) -> str:
    # never log a webhook's full URL: Slack puts its secret in the path

    return urlsplit(url).netloc


class Notifier:
    """Sends a notice everywhere it goes: log, in-app list (ledger state) and webhooks."""

    def __init__(
        self,
        state: Ledger | None,
        webhooks: Sequence[Webhook] | None = None,
        *,
        keep: int = 500,
        sender: WebhookSender | None = None,
    ) -> None:
        self.state = state
        self.webhooks = list(webhooks or [])
        self.keep = keep
        self.sender = sender or WebhookSender()
        #: called with each notice's dict after it is stored (the dashboard's live fan-out)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def notify(self, notice: Notice) -> None:
        """Log, store and post a notice. Never raises: alerting must not break a request."""
        level = logging.WARNING if notice.level in ("warning", "critical") else logging.INFO
        log.log(
            level,
            "notice kind=%s budget=%s scope=%s message=%r",
            notice.kind,
            notice.budget,
            notice.scope,
            notice.message,
        )
        if self.state is not None:
            try:
                self.state.set_state(NOTIFICATIONS_NS, notice.id, dict(notice.to_dict()))
                self._prune()
            except Exception as e:  # a full disk must not fail the request that crossed a threshold
                log.error("notice store_failed kind=%s error=%s", notice.kind, type(e).__name__)
        for fn in self.listeners:
            try:
                fn(dict(notice.to_dict()))
            except Exception:  # a broken listener must not break the request that crossed a threshold
                log.exception("notice listener_failed kind=%s", notice.kind)
        for hook in self.webhooks:
            self.sender.send(
                hook.url, notice.webhook_body(hook.format), retries=hook.retries, timeout_s=hook.timeout_s
            )

    def _prune(self) -> None:
        state = self.state
        if state is None:
            return
        items = state.list_state(NOTIFICATIONS_NS)
        if len(items) > self.keep:
            for key in sorted(items)[: len(items) - self.keep]:  # ids are time-ordered (UUIDv7)
                state.set_state(NOTIFICATIONS_NS, key, None)

    def close(self) -> None:
        self.sender.close()


def list_notifications(state: Ledger, *, limit: int = 100, kind: str | None = None) -> list[dict[str, Any]]:
    """Stored notifications, newest first."""
    items = state.list_state(NOTIFICATIONS_NS)
    out = [items[k] for k in sorted(items, reverse=True)]
    if kind:
        out = [n for n in out if n.get("kind") == kind]
    return out[:limit]
