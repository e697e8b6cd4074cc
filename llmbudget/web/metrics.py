"""Prometheus metrics for one app: GenAI token and duration histograms, cost, budgets, quota, proxy overhead.

Every app gets its own `CollectorRegistry` (never the process-wide default), so tests and several
apps in one process never see each other's series.

- Per-call series (`gen_ai_client_token_usage`, `gen_ai_client_operation_duration`,
  `llmbudget_cost_usd_total`, `llmbudget_requests_total`) are fed by `observe_events()`, which the
  live fan-out calls in its own thread with each batch of recorded events: the record path pays
  nothing beyond the fan-out's deque append it already pays.
- `llmbudget_proxy_overhead_seconds` is observed by the proxy itself (one histogram observation).
- Budget and quota gauges are computed at scrape time from the budget counters (`glance`, no
  reconciliation) and the newest quota readings, so they are never stale and cost nothing between
  scrapes. A gauge that would be infinite is omitted.

Agent labels are capped: the top `metrics.max_agents` agents by spend in this process keep their
own label, every other one is counted under `other`, so a flood of agent names cannot explode the
series count. An agent that climbs into the top N takes the place of the one it passes, from that
call on; every series only grows (see `Metrics._rank`).
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from ..budget.glance import glance
from ..events import UsageEvent, utcnow
from ..fanout import LiveHub
from ..money import from_nano
from ..quota.readings_log import latest_by_backend
from ..services import Services
from .api_budget import serving_enforcer

log = logging.getLogger("llmbudget.metrics")

#: the OpenTelemetry GenAI conventions' explicit bucket boundaries
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
#: time the proxy adds to a call: sub-millisecond is the target
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
OTHER = "other"
#: agents whose spend is counted to rank them; later ones count as `other` (a bound on memory)
MAX_TRACKED = 100_000
#: (gen_ai_token_type value, UsageEvent field); cached, cache write and reasoning are parts of input/output
TOKEN_TYPES = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cached_input", "cached_input_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("reasoning", "reasoning_tokens"),
)


class _Hist:
    """A histogram's buckets (not cumulative), sum and count: one bisect and two adds per observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le=bound counts value <= bound
        self.total += value

    def add(self, other: _Hist) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def add_to(self, fam: HistogramMetricFamily, labels: list[str]) -> None:
        buckets: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            acc += n
            buckets.append((_le(bound), acc))
        fam.add_metric(labels, buckets, self.total)


def _le(bound: float) -> str:
    """A bucket's `le` label as Prometheus writes it (`+Inf`, `0.01`, `1024.0`)."""
    return "+Inf" if bound == math.inf else repr(float(bound))


class _Series:
    """Everything one (backend, provider, model, agent, status) combination adds up to."""

    __slots__ = ("cost", "duration", "requests", "tokens", "unpriced")

    def __init__(self) -> None:
        self.tokens = tuple(_Hist(TOKEN_BUCKETS) for _ in TOKEN_TYPES)
        self.duration = _Hist(DURATION_BUCKETS)
        self.cost = Decimal(0)
        self.requests = 0
        self.unpriced = 0


class Metrics:
    """The app's metrics, kept in `services.metrics`.

    Per-call series are plain accumulators (about 2 µs an event, measured) turned into Prometheus
    families at scrape time; prometheus_client formats the page.
    """

    def __init__(self, services: Services, *, max_agents: int = 20) -> None:
        self.services = services
        self.max_agents = max_agents
        self.registry = CollectorRegistry(auto_describe=False)
        #: the agents with a label of their own: the top `max_agents` by spend in this process
        self._agents: set[str] = set()
        #: spend per agent in this process (at most MAX_TRACKED agents), which ranks them
        self._spend: dict[str, Decimal] = {}
        #: a lower bound of the smallest spend among `_agents` (their spend only grows)
        self._floor = Decimal(0)
        #: series by capped key (agent label), and each seen key's series (a cache, cleared when
        #: the labelled agents change)
        #: (backend, provider, requested model, answered model, agent label, status)
        self._series: dict[tuple[str, str, str, str, str, str], _Series] = {}
        self._route: dict[tuple[str, str, str, str, str | None, str], _Series] = {}
        self._lock = threading.Lock()
        self.overhead = _Hist(OVERHEAD_BUCKETS)
        #: what the proxy calls with the seconds it added to a call (on the event loop: one writer)
        self.observe_overhead = self.overhead.observe
        self.registry.register(_PerCall(self))
        self.registry.register(_ScrapeTime(self))

    # ------------------------------------------------------------------ per call
    def agent_label(self, agent: str | None) -> str:
        """The agent's label: itself while it is among the top `max_agents` by spend, else `other`."""
        name = agent or "unknown"
        return name if name in self._agents else OTHER

    def _rank(self, name: str, cost: Decimal | None) -> None:
        """Count the agent's spend and let it into the labelled agents when it now ranks there.

        The first `max_agents` agents seen are labelled at once; after that an agent whose spend
        passes the smallest labelled one's takes its place. Each call's cost goes to the series
        its agent had at that moment and stays there: the newcomer's earlier spend stays in
        `other`, the displaced agent's cost series ends (Prometheus keeps what it counted) and its
        later calls count under `other`. No series ever goes down, so `rate()` and `increase()`
        stay exact across a change.
        """
        spend = self._spend
        if cost is not None and (name in spend or len(spend) < MAX_TRACKED):
            spend[name] = spend.get(name, Decimal(0)) + cost
        agents = self._agents
        if name in agents:
            return
        if len(agents) < self.max_agents:
            agents.add(name)
            self._route.clear()
            return
        mine = spend.get(name)
        if mine is None or mine <= self._floor or not agents:
            return
        low = min(agents, key=lambda a: (spend.get(a, Decimal(0)), a))
        low_spend = spend.get(low, Decimal(0))
        if mine > low_spend:
            agents.remove(low)
            agents.add(name)
            self._fold(low)
            self._route.clear()
            low_spend = min(spend.get(a, Decimal(0)) for a in agents)
        self._floor = low_spend

    def _fold(self, agent: str) -> None:
        """Move a displaced agent's series into `other`'s: all but its cost, whose series ends
        (moving it would count it twice in a rate over the change)."""
        for key in [k for k in self._series if k[4] == agent]:
            s = self._series.pop(key)
            into = self._series.setdefault((*key[:4], OTHER, key[5]), _Series())
            for a, b in zip(into.tokens, s.tokens, strict=True):
                a.add(b)
            into.duration.add(s.duration)
            into.requests += s.requests
            into.unpriced += s.unpriced

    def observe_events(self, events: Iterable[UsageEvent]) -> None:
        """Add recorded calls to the per-call series (the fan-out's thread calls this)."""
        with self._lock:
            for ev in events:
                try:
                    self._observe(ev)
                except Exception:  # metrics never stop the fan-out
                    log.exception("metrics_observe_failed id=%s", ev.id)

    def _observe(self, ev: UsageEvent) -> None:
        self._rank(ev.agent or "unknown", ev.cost_usd)
        key = (ev.backend, ev.provider, ev.request_model or ev.model, ev.model, ev.agent, ev.status)
        series = self._route.get(key)
        if series is None:
            agent = self.agent_label(ev.agent)
            capped = (key[0], key[1], key[2] or "unknown", key[3], agent, key[5])
            series = self._series.get(capped)
            if series is None:
                series = self._series[capped] = _Series()
            if len(self._route) < 100_000:
                self._route[key] = series
        tokens = series.tokens
        tokens[0].observe(ev.input_tokens)
        tokens[1].observe(ev.output_tokens)
        if ev.cached_input_tokens:
            tokens[2].observe(ev.cached_input_tokens)
        if ev.cache_write_tokens:
            tokens[3].observe(ev.cache_write_tokens)
        if ev.reasoning_tokens:
            tokens[4].observe(ev.reasoning_tokens)
        if ev.duration_ms is not None:
            series.duration.observe(ev.duration_ms / 1000.0)
        cost = ev.cost_usd
        if cost is None:
            series.unpriced += 1
        else:
            series.cost += cost  # Decimal: exact, and cheaper than converting to nano-USD per call
        series.requests += 1

    # ------------------------------------------------------------------ scrape
    def exposition(self) -> bytes:
        """The Prometheus text format of every series (blocking: budget and quota reads)."""
        return generate_latest(self.registry)


class _PerCall:
    """The per-call series as Prometheus families (each distinct series once, agents already capped)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        tokens = HistogramMetricFamily(
            "gen_ai_client_token_usage",
            "Tokens used per call (OpenTelemetry gen_ai.client.token.usage); cached_input and "
            "cache_write are parts of input, reasoning a part of output",
            labels=[
                "gen_ai_operation_name",
                "gen_ai_provider_name",
                "gen_ai_request_model",
                "gen_ai_token_type",
            ],
        )
        duration = HistogramMetricFamily(
            "gen_ai_client_operation_duration",
            "Seconds per call, request to last answer byte (OpenTelemetry gen_ai.client.operation.duration)",
            labels=["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"],
        )
        cost = CounterMetricFamily(
            "llmbudget_cost_usd",
            "Spend in USD by backend, model and agent (agents outside the top metrics.max_agents by "
            "spend count as 'other')",
            labels=["backend", "model", "agent"],
        )
        requests = CounterMetricFamily(
            "llmbudget_requests",
            "Recorded calls by backend, model and status",
            labels=["backend", "model", "status"],
        )
        unpriced = CounterMetricFamily(
            "llmbudget_unpriced_requests",
            "Calls with no known price, by backend and model",
            labels=["backend", "model"],
        )
        overhead = HistogramMetricFamily(
            "llmbudget_proxy_overhead_seconds",
            "Time the proxy adds to a call: the whole call minus the time spent waiting on the upstream",
            labels=[],
        )
        tok: dict[tuple[str, ...], _Hist] = {}
        dur: dict[tuple[str, ...], _Hist] = {}
        usd: dict[tuple[str, ...], Decimal] = {}
        req: dict[tuple[str, ...], int] = {}
        unp: dict[tuple[str, ...], int] = {}
        with m._lock:
            for (backend, provider, model, answered, agent, status), s in m._series.items():
                op = "embeddings" if "embed" in model else "chat"
                for (ttype, _), h in zip(TOKEN_TYPES, s.tokens, strict=True):
                    _merge(tok, (op, provider, model, ttype), h)
                _merge(dur, (op, provider, model), s.duration)
                usd[(backend, answered, agent)] = usd.get((backend, answered, agent), Decimal(0)) + s.cost
                req[(backend, answered, status)] = req.get((backend, answered, status), 0) + s.requests
                if s.unpriced:
                    unp[(backend, answered)] = unp.get((backend, answered), 0) + s.unpriced
            for k, h in sorted(tok.items()):
                if any(h.counts):
                    h.add_to(tokens, list(k))
            for k, h in sorted(dur.items()):
                h.add_to(duration, list(k))
            m.overhead.add_to(overhead, [])
        for k, v in sorted(usd.items()):
            cost.add_metric(list(k), float(v))
        for k, n in sorted(req.items()):
            requests.add_metric(list(k), float(n))
        for k, n in sorted(unp.items()):
            unpriced.add_metric(list(k), float(n))
        yield from (tokens, duration, cost, requests, unpriced, overhead)


def _merge(into: dict[tuple[str, ...], _Hist], key: tuple[str, ...], h: _Hist) -> None:
    cur = into.get(key)
    if cur is None:
        cur = into[key] = _Hist(h.bounds)
    cur.counts = [a + b for a, b in zip(cur.counts, h.counts, strict=True)]
    cur.total += h.total


class _ScrapeTime:
    """Budget, pause and quota gauges, read when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        services = self.metrics.services
        try:
            yield from _budget_families(services)
        except Exception as e:  # counters unreachable: the other series are still served
            log.warning("metrics_budgets_unreadable error=%s", type(e).__name__)
        try:
            yield from _quota_families(services)
        except Exception as e:
            log.warning("metrics_quota_unreadable error=%s", type(e).__name__)


def _budget_families(services: Services) -> Iterator[Metric]:
    enf = serving_enforcer(services)
    labels = ["budget", "scope", "value", "period", "unit"]
    spent = GaugeMetricFamily(
        "llmbudget_budget_spent",
        "Spent in the budget's current window (USD, or tokens/requests)",
        labels=labels,
    )
    limit = GaugeMetricFamily("llmbudget_budget_limit", "The budget's limit in its unit", labels=labels)
    reserved = GaugeMetricFamily(
        "llmbudget_budget_reserved",
        "Held for calls in flight (and budget leased to this process's admission), not spent yet",
        labels=labels,
    )
    remaining = GaugeMetricFamily(
        "llmbudget_budget_remaining", "Limit minus spent and reserved, never below 0", labels=labels
    )
    statuses = glance(enf.budgets, enf.store, enf.tz, utcnow(), ledger=services.ledger)
    for s in statuses:
        b = s.budget  # every budget has a finite limit (an integer), so no gauge is ever +Inf
        money = b.unit == "usd"

        def val(v: int, money: bool = money) -> float:
            return float(from_nano(v)) if money else float(v)

        lv = [b.name, b.scope, "" if b.scope == "global" else s.value, b.period, b.unit]
        spent.add_metric(lv, val(s.spent))
        limit.add_metric(lv, val(b.limit))
        reserved.add_metric(lv, val(s.reserved))
        remaining.add_metric(lv, val(s.remaining))
    paused = GaugeMetricFamily("llmbudget_agent_paused", "1 for each paused agent", labels=["agent"])
    for agent in sorted(enf.paused()):
        paused.add_metric([agent], 1.0)
    yield from (spent, limit, reserved, remaining, paused)


def _quota_families(services: Services) -> Iterator[Metric]:
    labels = ["account", "provider", "window"]
    util = GaugeMetricFamily(
        "llmbudget_quota_utilization",
        "Fraction 0-1 of the window used, from the newest reading of the account (headers or probe)",
        labels=labels,
    )
    reset = GaugeMetricFamily(
        "llmbudget_quota_reset_timestamp_seconds", "When the window resets (unix seconds)", labels=labels
    )
    for name, r in sorted(latest_by_backend(services.ledger.latest_readings()).items()):
        for wname, w in sorted(r.windows.items()):
            if w.utilization is not None:
                util.add_metric([name, r.provider, wname], float(w.utilization))
            if w.reset is not None:
                reset.add_metric([name, r.provider, wname], w.reset.timestamp())
        for lname, lim in sorted(r.limits.items()):
            frac = lim.fraction_used
            if frac is not None:
                util.add_metric([name, r.provider, lname], frac)
            if lim.reset is not None:
                reset.add_metric([name, r.provider, lname], lim.reset.timestamp())
    yield from (util, reset)


def install_metrics(services: Services, hub: LiveHub) -> Metrics:
    """Build the app's metrics once (`services.metrics`), fed by the live fan-out `hub`."""
    m = services.metrics
    if not isinstance(m, Metrics):
        m = Metrics(services, max_agents=services.config.metrics.max_agents)
        services.metrics = m
        hub.add_local_listener(m.observe_events)
    return m
