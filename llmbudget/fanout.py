"""Live fan-out: every recorded event (and notice) reaches every open dashboard within a second.

`publish()` is what the ledger's record path calls: an append to a deque (well under a
microsecond), never I/O, never a lock, never a thread woken, so the proxy is never slowed by
dashboards. One background thread drains the deque every `DISPATCH_S` (a tenth of a second: waking
it for each event cost the proxy a GIL hand-off per call), turns the events of one dispatch into
small increments (agent, session, tokens, cost, model, ...), one per agent, session, model and
status however many calls it sums (`increments()`), and either

- hands them to this process's subscribers (no Redis), or
- publishes them on a Redis channel (`live.redis_url`, else `budgets.redis_url`); a second
  thread listens on that channel and hands every replica's increments to this process's
  subscribers, so a page attached to any replica shows the traffic of all of them.

A subscriber is an asyncio queue of bounded size (one per open SSE stream). When it is full
(a slow client) its pending increments are dropped and it receives one `resync` marker instead,
after which the page re-reads the totals once.

Local listeners (`add_local_listener`) receive this process's own events in the dispatcher
thread: the threshold watch uses that to check alert thresholds off the request path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from .events import UsageEvent
from .money import decimal_str, from_nano

log = logging.getLogger("llmbudget.live")

#: increments waiting for the dispatcher; beyond this the oldest are dropped (never block the proxy)
BACKLOG = 20_000
#: increments one subscriber may have queued before it is told to resync
SUBSCRIBER_QUEUE = 5000
#: the pub/sub channel, suffixed with the Redis database number (`:db3`): Redis channels are
#: shared by every database of a server, and two deployments on two databases must not mix
CHANNEL = "llmbudget:live"
#: how often the dispatcher asks its followers for calls other processes recorded
FOLLOW_S = 1.0
#: how often the dispatcher drains what was published (the pages' "within a second" has room)
DISPATCH_S = 0.1


class LiveItem(dict[str, Any]):
    """An increment (or notice) with its server-sent-event frame, encoded once for every open stream."""

    __slots__ = ("frame",)

    def __init__(self, item: dict[str, Any]) -> None:
        super().__init__(item)
        self.frame = _encode_frame(item)


def frame(kind: str, payload: Any) -> str:
    """One server-sent event: `event: kind` and the payload as compact JSON."""
    return f"event: {kind}\ndata: {orjson.dumps(payload, default=str).decode()}\n\n"


def _encode_frame(item: dict[str, Any]) -> str:
    return frame(str(item.get("type", "usage")), item)


def sse_frame(item: dict[str, Any]) -> str:
    """The `event:`/`data:` frame of one item (encoded once per item when it came from the hub)."""
    frame = getattr(item, "frame", None)
    return frame if isinstance(frame, str) else _encode_frame(item)


def increment(ev: UsageEvent, replica: str) -> dict[str, Any]:
    """The small JSON-ready increment a page applies for one event (`calls` is 1)."""
    nano = ev.cost_nano
    return {
        "type": "usage",
        "id": ev.id,
        "ts": ev.timestamp.isoformat().replace("+00:00", "Z"),
        "agent": ev.agent,
        "session": ev.session,
        "backend": ev.backend,
        "provider": ev.provider,
        "model": ev.model,
        "tier": ev.tier,
        "status": ev.status,
        "calls": 1,
        "input_tokens": ev.input_tokens,
        "output_tokens": ev.output_tokens,
        "cached_input_tokens": ev.cached_input_tokens,
        "tokens": ev.input_tokens + ev.output_tokens,
        "cost_nano": nano,
        "cost_usd": None if nano is None else decimal_str(from_nano(nano)),
        "replica": replica,
    }


#: per-call costs a coalesced increment carries for the cards' "last 10 requests" trend
RECENT_COSTS = 10


def increments(events: list[UsageEvent], replica: str) -> list[dict[str, Any]]:
    """The increments a page applies for one dispatch's events: one per (agent, session, backend,
    provider, model, tier, status), however many calls it sums.

    An increment for one call is `increment()`'s. For several, the counts and tokens are summed,
    `calls` says how many, `cost_nano` sums the priced ones (None when none was priced),
    `recent_costs` holds the last `RECENT_COSTS` priced calls' costs in order, and `id`/`ts` are the
    latest call's. A page applies it exactly as it would apply each call: totals, cards and budget
    bars come out the same, while a stream at thousands of calls a second stays a few small frames
    per dispatch for every open page (and for the browser that parses them).
    """
    groups: dict[tuple[Any, ...], list[UsageEvent]] = {}
    for ev in events:
        key = (ev.agent, ev.session, ev.backend, ev.provider, ev.model, ev.tier, ev.status)
        group = groups.get(key)
        if group is None:
            groups[key] = [ev]
        else:
            group.append(ev)
    if len(groups) == len(events):
        return [increment(ev, replica) for ev in events]
    # in the order of each group's latest call, so a card ends on the session that came last
    order = {id(ev): i for i, ev in enumerate(events)}
    out: list[dict[str, Any]] = []
    for group in sorted(groups.values(), key=lambda g: order[id(g[-1])]):
        inc = increment(group[-1], replica)
        if len(group) > 1:
            known = [c for c in (ev.cost_nano for ev in group) if c is not None]
            nano = sum(known) if known else None
            inp = sum(ev.input_tokens for ev in group)
            outp = sum(ev.output_tokens for ev in group)
            inc.update(
                calls=len(group),
                input_tokens=inp,
                output_tokens=outp,
                cached_input_tokens=sum(ev.cached_input_tokens for ev in group),
                tokens=inp + outp,
                cost_nano=nano,
                cost_usd=None if nano is None else decimal_str(from_nano(nano)),
                recent_costs=known[-RECENT_COSTS:],
            )
        out.append(inc)
    return out


_RESYNC = {"type": "resync", "reason": "slow client: increments dropped"}


class LiveBatch(list[dict[str, Any]]):
    """What one dispatch hands every open page: its increments and their frames joined once."""

    __slots__ = ("text",)

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__(items)
        self.text = "".join(sse_frame(x) for x in items)


class Subscription:
    """One open stream's pending batches, living on one event loop.

    The hub hands over a batch (all it drained in one dispatch, its frames already joined) as one
    object: one append and one wake-up per page per batch, however many calls the batch holds.
    At most `maxsize` increments wait; beyond that the pending ones are dropped for a single
    `resync` marker.
    """

    def __init__(self, hub: LiveHub, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self.hub = hub
        self.loop = loop
        self.maxsize = maxsize
        self.pending: collections.deque[list[dict[str, Any]]] = collections.deque()
        self.waiting = 0
        self._ready = asyncio.Event()
        self.dropped = 0

    def offer(self, items: list[dict[str, Any]]) -> None:
        """Runs on the subscriber's loop: queue the batch, or drop everything and ask for a resync."""
        if self.waiting + len(items) > self.maxsize:
            self.dropped += self.waiting + len(items)
            self.pending.clear()
            self.pending.append([dict(_RESYNC)])
            self.waiting = 1
        else:
            self.pending.append(items)
            self.waiting += len(items)
        self._ready.set()

    async def batches(self, timeout: float | None = None) -> list[list[dict[str, Any]]]:
        """Every pending batch (waiting up to `timeout` for one); [] when the wait timed out."""
        if not self.pending:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return []
        out = list(self.pending)
        self.pending.clear()
        self.waiting = 0
        return out

    async def get(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every pending increment, in order (waiting up to `timeout`); [] when the wait timed out."""
        return [x for batch in await self.batches(timeout) for x in batch]

    def end(self) -> None:
        """Runs on the subscriber's loop: the stream ends after what is queued."""
        self.pending.append([{"type": "bye"}])
        self._ready.set()

    def close(self) -> None:
        self.hub.unsubscribe(self)


def batch_text(batch: list[dict[str, Any]]) -> str:
    """The SSE text of a batch: joined once by the hub, else frame by frame (markers)."""
    text = getattr(batch, "text", None)
    if isinstance(text, str):
        return text
    return "".join(sse_frame(x) for x in batch if x.get("type") != "bye")


class LiveHub:
    """The fan-out object kept in `services.live`."""

    def __init__(self, redis_url: str | None = None, *, replica: str | None = None) -> None:
        self.redis_url = redis_url
        self.replica = replica or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._pending: collections.deque[Any] = collections.deque(maxlen=BACKLOG)
        self._wake = threading.Event()
        self._subs: set[Subscription] = set()
        self._subs_lock = threading.Lock()
        self._local: list[Callable[[list[UsageEvent]], None]] = []
        self._followers: list[Callable[[], list[UsageEvent]]] = []
        self._next_follow = 0.0
        self._follow_idle = True
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._redis: Any = None
        self.channel = CHANNEL
        self._pubsub: Any = None
        self.published = 0
        self.delivered = 0

    # ------------------------------------------------------------------ the record path
    def publish(self, event: UsageEvent) -> None:
        """Queue an event for every open page. Non-blocking; safe from any thread."""
        self._pending.append(event)

    def publish_notice(self, notice: dict[str, Any]) -> None:
        """Queue a notification (a `Notice.to_dict()`) for every open page."""
        self._pending.append({"type": "notice", **notice})
        self._wake.set()

    # ------------------------------------------------------------------ subscribers
    def subscribe(self, maxsize: int = SUBSCRIBER_QUEUE) -> Subscription:
        """A new subscription on the running event loop."""
        sub = Subscription(self, asyncio.get_running_loop(), maxsize)
        with self._subs_lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._subs_lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def add_follower(self, fn: Callable[[], list[UsageEvent]]) -> None:
        """Call `fn()` in the dispatcher thread every FOLLOW_S for events other processes recorded
        (imports, `import ... --watch`, `wrap()` elsewhere); this process's open pages get them.
        They are not published to Redis: every replica follows the same ledger for its own pages."""
        self._followers.append(fn)

    def add_local_listener(self, fn: Callable[[list[UsageEvent]], None]) -> None:
        """Call `fn(events)` in the dispatcher thread with this process's own recorded events."""
        self._local.append(fn)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LiveHub:
        if self._threads:
            return self
        if self.redis_url:
            import redis

            self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=5)
            db = self._redis.connection_pool.connection_kwargs.get("db", 0)
            self.channel = f"{CHANNEL}:db{db}"
            t = threading.Thread(target=self._listen, name="llmbudget-live-redis", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._dispatch, name="llmbudget-live", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def end_streams(self) -> None:
        """Tell every open stream to finish (the server is stopping: do not hold its shutdown)."""
        with self._subs_lock:
            subs = list(self._subs)
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub.end)
            except RuntimeError:
                self.unsubscribe(sub)

    def close(self) -> None:
        self.end_streams()
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=2)
        self._threads = []
        for c in (self._pubsub, self._redis):
            if c is not None:
                with contextlib.suppress(Exception):  # closing at shutdown: nothing left to tell
                    c.close()

    # ------------------------------------------------------------------ threads
    def _dispatch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(DISPATCH_S)
            self._wake.clear()
            if self._followers and time.monotonic() >= self._next_follow:
                self._follow()
            batch: list[Any] = []
            pending = self._pending
            while pending:
                try:
                    batch.append(pending.popleft())
                except IndexError:
                    break
            if not batch:
                continue
            events = [x for x in batch if isinstance(x, UsageEvent)]
            for fn in self._local:
                if events:
                    try:
                        fn(events)
                    except Exception:
                        log.exception("live_local_listener_failed")
            if self._redis is None and not self._subs:
                continue  # nobody is watching: the increments would go nowhere
            # one increment per agent/session/model/... of this dispatch, then the notices
            items = increments(events, self.replica) + [x for x in batch if not isinstance(x, UsageEvent)]
            self.published += len(items)
            if self._redis is not None:
                try:
                    if self._pubsub is not None:
                        self._redis.publish(self.channel, json.dumps(items, separators=(",", ":")))
                        continue
                except Exception as e:  # Redis down: this replica's pages still see its own traffic
                    log.warning("live_redis_publish_failed error=%s", type(e).__name__)
            self._deliver(items)

    def _follow(self) -> None:
        self._next_follow = time.monotonic() + FOLLOW_S
        if not self._subs:  # nobody watching: no reads; what is recorded meanwhile is not news
            self._follow_idle = True
            return
        others: list[UsageEvent] = []
        for fn in self._followers:
            try:
                others.extend(fn())
            except Exception as e:  # the database briefly unavailable: the next turn catches up
                log.warning("live_follow_failed error=%s", type(e).__name__)
        if self._follow_idle:  # the first look since a page opened only learns what is there
            self._follow_idle = False
            return
        if others:
            self._deliver(increments(others, self.replica))

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                if self._pubsub is None:
                    ps = self._redis.pubsub(ignore_subscribe_messages=True)
                    ps.subscribe(self.channel)
                    self._pubsub = ps
                msg = self._pubsub.get_message(timeout=0.5)
            except Exception as e:  # Redis down: retry; meanwhile publishing falls back to this process
                log.warning("live_redis_listen_failed error=%s", type(e).__name__)
                self._pubsub = None
                self._stop.wait(1.0)
                continue
            if not msg or msg.get("type") != "message":
                continue
            try:
                items = json.loads(msg["data"])
            except ValueError:
                continue
            if isinstance(items, list):
                self._deliver(items)

    def _deliver(self, items: list[dict[str, Any]]) -> None:
        with self._subs_lock:
            subs = list(self._subs)
        if subs:
            # encoded and joined once here, not once per open page (20 pages cost 20 encodings)
            items = LiveBatch([x if isinstance(x, LiveItem) else LiveItem(x) for x in items])
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub.offer, items)
            except RuntimeError:  # its loop is closed: the stream is gone
                self.unsubscribe(sub)
        self.delivered += len(items)
