"""In-process meter: thread-safe running totals per tier, agent and model, plus the session total.

For apps that track their own LLM spend (a GUI cost panel, a batch job's summary line).
No I/O and no background work: `record()` adds plain integers under one lock (costs in
integer nano-USD, so totals are exact) and formats nothing; `snapshot()` formats.

Subscribers are event-driven. A plain subscriber is called after every change, in the
thread that made it, with a `MeterUpdate` (the delta and a version number), so every change
is observable. A coalescing subscriber (`subscribe(cb, coalesce_s=0.25)`) is for GUIs: it gets
`snapshot()` dicts at most once per interval, and always one after the last change, so the
state it ends with includes every change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import ValidationError
from .events import UsageEvent
from .money import from_nano, to_nano, usd

log = logging.getLogger(__name__)

#: group key used when a call names no tier, agent or model
NONE_KEY = "(none)"

# Positions in a group's counter list: plain ints, updated in place under the lock.
_CALLS, _IN, _OUT, _CACHED, _REASONING, _COST, _UNPRICED = range(7)
_FIELDS = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_calls",
)


@dataclass(frozen=True, slots=True)
class MeterUpdate:
    """One change, as plain subscribers receive it. `kind` is `record` or `reset`.

    `version` increases by one per change; a subscriber fed from several threads can
    order updates by it (callbacks run outside the lock, so they may arrive out of order).
    """

    kind: str
    version: int
    tier: str | None = None
    agent: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    #: integer nano-USD; None: the call was unpriced (its cost is unknown, not zero)
    cost_nano: int | None = None

    @property
    def cost_usd(self) -> Decimal | None:
        """The call's cost as Decimal USD, None when unpriced."""
        return None if self.cost_nano is None else from_nano(self.cost_nano)


Subscriber = Callable[[Any], None]


def _cost_str(nanos: int) -> str:
    """Exact decimal string without trailing zeros: 1_234_000_000 -> '1.234'."""
    return format(from_nano(nanos).normalize(), "f")


def _cost_or_none(c: list[int]) -> str | None:
    # A group whose every call was unpriced has an unknown cost, never "$0".
    if c[_UNPRICED] and c[_UNPRICED] == c[_CALLS]:
        return None
    return _cost_str(c[_COST])


def _group_dict(c: list[int]) -> dict[str, Any]:
    return {
        "calls": c[_CALLS],
        "input_tokens": c[_IN],
        "output_tokens": c[_OUT],
        "cached_input_tokens": c[_CACHED],
        "reasoning_tokens": c[_REASONING],
        "cost_usd": _cost_or_none(c),
        "unpriced_calls": c[_UNPRICED],
    }


def _compact_group(c: list[int]) -> dict[str, Any]:
    # Per-group entries carry the counters a panel shows; zero cached/reasoning/unpriced
    # counts are left out to keep a 4-tier snapshot well under 1 KB of JSON.
    d: dict[str, Any] = {
        "calls": c[_CALLS],
        "input_tokens": c[_IN],
        "output_tokens": c[_OUT],
        "cost_usd": _cost_or_none(c),
    }
    if c[_CACHED]:
        d["cached_input_tokens"] = c[_CACHED]
    if c[_REASONING]:
        d["reasoning_tokens"] = c[_REASONING]
    if c[_UNPRICED]:
        d["unpriced_calls"] = c[_UNPRICED]
    return d


def _named(groups: dict[str | None, list[int]]) -> dict[str, dict[str, Any]]:
    return {NONE_KEY if k is None else k: _compact_group(v) for k, v in groups.items()}


class _Coalescer:
    """Delivers snapshots to one GUI-style subscriber at most once per interval, trailing edge guaranteed."""

    def __init__(self, meter: Meter, callback: Subscriber, interval: float, detail: bool) -> None:
        self.meter = meter
        self.detail = detail
        self.callback = callback
        self.interval = interval
        self.lock = threading.Lock()
        self.last = 0.0
        self.timer: threading.Timer | None = None
        self.closed = False

    def poke(self) -> None:
        """A change happened: deliver now, or schedule a delivery unless one is already due."""
        with self.lock:
            if self.closed or self.timer is not None:
                return  # a delivery is already scheduled; it will read the newest state
            wait = self.last + self.interval - time.monotonic()
            if wait > 0:
                self.timer = threading.Timer(wait, self._fire)
                self.timer.daemon = True
                self.timer.start()
                return
            self.last = time.monotonic()
        self._deliver()

    def _fire(self) -> None:
        with self.lock:
            self.timer = None
            if self.closed:
                return
            self.last = time.monotonic()
        self._deliver()

    def _deliver(self) -> None:
        try:
            self.callback(self.meter.snapshot(detail=self.detail))
        except Exception:
            log.exception("meter subscriber failed callback=%r", self.callback)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None


class Meter:
    """Thread-safe in-process totals: session, per tier (role), per agent and per model.

    >>> m = Meter()
    >>> m.record(tier="fast", agent="planner", model="gpt-4o-mini", input_tokens=1200,
    ...          output_tokens=300, cost_usd=Decimal("0.00036"))
    >>> m.snapshot()["session"]["cost_usd"]
    '0.00036'
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()
        self._coalescers: tuple[_Coalescer, ...] = ()
        self._sub_lock = threading.Lock()
        self._reset_state()

    def _reset_state(self) -> None:
        self._session = [0] * 7
        self._tiers: dict[str | None, list[int]] = {}
        self._agents: dict[str | None, list[int]] = {}
        self._models: dict[str | None, list[int]] = {}
        self._version = getattr(self, "_version", 0)
        self._started = time.time()

    # ------------------------------------------------------------------ writes
    def record(
        self,
        event: UsageEvent | None = None,
        /,
        *,
        tier: str | None = None,
        agent: str | None = None,
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_input_tokens: int = 0,
        reasoning_tokens: int = 0,
        cost_usd: Decimal | int | str | float | None = None,
        cost_nano: int | None = None,
    ) -> None:
        """Add one call: a `UsageEvent`, or keyword arguments.

        `cost_usd=None` (and no `cost_nano`) means the call is unpriced: it is counted in
        `unpriced_calls`, never as $0. Token counts follow UsageEvent: input includes cached,
        output includes reasoning. Raises ValidationError for negative counts or costs.
        """
        if event is not None:
            tier, agent, model = event.tier, event.agent, event.model
            input_tokens, output_tokens = event.input_tokens, event.output_tokens
            cached_input_tokens, reasoning_tokens = event.cached_input_tokens, event.reasoning_tokens
            nano = event.cost_nano
        else:
            if not (
                type(input_tokens) is int
                and type(output_tokens) is int
                and type(cached_input_tokens) is int
                and type(reasoning_tokens) is int
            ):
                raise ValidationError("tokens", "token counts must be whole numbers (int)")
            if input_tokens < 0 or output_tokens < 0 or cached_input_tokens < 0 or reasoning_tokens < 0:
                raise ValidationError("tokens", "token counts must not be negative")
            if cost_nano is not None:
                nano = int(cost_nano)
            elif cost_usd is None:
                nano = None
            elif isinstance(cost_usd, Decimal):
                nano = to_nano(cost_usd)
            else:
                try:
                    nano = to_nano(usd(cost_usd))
                except ValueError as e:
                    raise ValidationError("cost_usd", str(e)) from e
            if nano is not None and nano < 0:
                raise ValidationError("cost_usd", "must not be negative")
        cost = nano or 0
        unpriced = 1 if nano is None else 0
        with self._lock:
            for c in (
                self._session,
                self._group(self._tiers, tier),
                self._group(self._agents, agent),
                self._group(self._models, model),
            ):
                c[0] += 1
                c[1] += input_tokens
                c[2] += output_tokens
                c[3] += cached_input_tokens
                c[4] += reasoning_tokens
                c[5] += cost
                c[6] += unpriced
            self._version += 1
            version = self._version
        if self._subscribers:
            self._notify(
                MeterUpdate(
                    "record",
                    version,
                    tier,
                    agent,
                    model,
                    input_tokens,
                    output_tokens,
                    cached_input_tokens,
                    reasoning_tokens,
                    nano,
                )
            )
        for co in self._coalescers:
            if co.timer is None:  # read without the lock: a due delivery will see this change anyway
                co.poke()

    @staticmethod
    def _group(groups: dict[str | None, list[int]], key: str | None) -> list[int]:
        c = groups.get(key)
        if c is None:
            c = groups[key] = [0] * 7
        return c

    def reset(self) -> None:
        """Zero every total (a new session). Subscribers see a `reset` update."""
        with self._lock:
            self._reset_state()
            self._version += 1
            version = self._version
        if self._subscribers:
            self._notify(MeterUpdate("reset", version))
        for co in self._coalescers:
            co.poke()

    # ------------------------------------------------------------------ reads
    def snapshot(self, *, detail: bool = False) -> dict[str, Any]:
        """A small JSON-ready dict of the current totals (< 1 KB of JSON for 4 tiers).

        `session` has every counter; `tiers` maps a tier name (or "(none)") to calls,
        input/output tokens and cost, plus cached/reasoning/unpriced counts when non-zero.
        `detail=True` adds `agents` and `models` in the same shape. Costs are exact decimal
        strings in USD and leave unpriced calls out; a group whose every call was unpriced
        has `cost_usd: null`.
        """
        with self._lock:
            session = list(self._session)
            tiers = {k: list(v) for k, v in self._tiers.items()}
            if detail:
                agents = {k: list(v) for k, v in self._agents.items()}
                models = {k: list(v) for k, v in self._models.items()}
            version, started = self._version, self._started
        snap: dict[str, Any] = {
            "version": version,
            "started_at": int(started),
            "session": _group_dict(session),
            "tiers": _named(tiers),
        }
        if detail:
            snap["agents"] = _named(agents)
            snap["models"] = _named(models)
        return snap

    def total_cost(self) -> Decimal:
        """The session's priced cost so far (unpriced calls excluded; see `unpriced_calls`)."""
        with self._lock:
            return from_nano(self._session[_COST])

    @property
    def version(self) -> int:
        """Number of changes so far (records and resets)."""
        return self._version

    # ------------------------------------------------------------------ subscribers
    def subscribe(
        self, callback: Subscriber, *, coalesce_s: float | None = None, detail: bool = False
    ) -> Callable[[], None]:
        """Call `callback` on every change; returns a function that unsubscribes.

        Without `coalesce_s` the callback gets a `MeterUpdate` for each change, synchronously in
        the recording thread, outside the meter's lock (it may call `snapshot()`). With
        `coalesce_s` it gets a `snapshot(detail=detail)` dict at most once per that many seconds, from the
        recording thread or a timer thread, and always once after the last change. A callback
        that raises is logged and never breaks recording.
        """
        if coalesce_s is not None and coalesce_s < 0:
            raise ValidationError("coalesce_s", "must not be negative")
        coalescer = _Coalescer(self, callback, coalesce_s, detail) if coalesce_s else None
        with self._sub_lock:
            # copy-on-write: record() reads the tuples without taking a lock
            if coalescer is not None:
                self._coalescers = (*self._coalescers, coalescer)
            else:
                self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._sub_lock:
                if coalescer is not None:
                    self._coalescers = tuple(c for c in self._coalescers if c is not coalescer)
                else:
                    subs = list(self._subscribers)
                    if callback in subs:
                        subs.remove(callback)
                    self._subscribers = tuple(subs)
            if coalescer is not None:
                coalescer.close()

        return unsubscribe

    def _notify(self, update: MeterUpdate) -> None:
        for cb in self._subscribers:
            try:
                cb(update)
            except Exception:
                log.exception("meter subscriber failed callback=%r", cb)

    def __repr__(self) -> str:
        s = self.snapshot()["session"]
        return f"Meter(calls={s['calls']}, cost_usd={s['cost_usd']}, unpriced_calls={s['unpriced_calls']})"
