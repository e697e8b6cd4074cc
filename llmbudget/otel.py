"""Optional OpenTelemetry export (`pip install 'llmbudget[otel]'`): one span per call and the GenAI metrics, over OTLP/HTTP.

Enabled by `otel.endpoint` in the config or the standard `$OTEL_EXPORTER_OTLP_ENDPOINT`; with
neither, nothing here is imported and the base install needs no OpenTelemetry package. The
exporter is fed like `/metrics`: by the live fan-out's thread with each batch of recorded events,
so the proxy's request path pays nothing. Providers are this app's own (never the process-wide
global ones), so an application that embeds llmbudget keeps its own OpenTelemetry set-up.

Each call becomes a CLIENT span `{operation} {request model}` that starts and ends when the call
did, with the GenAI semantic conventions' attributes (`gen_ai.usage.input_tokens`,
`gen_ai.usage.output_tokens`, `gen_ai.usage.cache_read.input_tokens`,
`gen_ai.usage.cache_creation.input_tokens`, ...) and llmbudget's own (`llmbudget.cost_usd`,
`llmbudget.agent`, ...). Metrics: `gen_ai.client.token.usage`, `gen_ai.client.operation.duration`
and the counter `llmbudget.cost` (USD).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from . import __version__
from .errors import ConfigError
from .events import ATTRIBUTION, UsageEvent
from .services import Services
from .web.metrics import DURATION_BUCKETS, TOKEN_BUCKETS

# OpenTelemetry is the optional `otel` extra: imported only when an exporter is built.

log = logging.getLogger("llmbudget.otel")
#: attribution fields exported only as `llmbudget.<name>` (agent and session have GenAI names)
_PLAIN_ATTRIBUTION = tuple(n for n in ATTRIBUTION if n not in ("agent", "session"))

ENV_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"


def otel_endpoint(config: Any) -> str | None:
    """The OTLP/HTTP endpoint in force: `otel.endpoint`, else `$OTEL_EXPORTER_OTLP_ENDPOINT`, else None (off)."""
    return config.otel.endpoint or os.environ.get(ENV_ENDPOINT) or None


def span_attributes(ev: UsageEvent) -> dict[str, Any]:
    """The span's attributes: GenAI conventions first, then llmbudget's own (no None values)."""
    model = ev.request_model or ev.model
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": _operation(ev),
        "gen_ai.provider.name": ev.provider,
        "gen_ai.request.model": model,
        "gen_ai.response.model": ev.model,
        "gen_ai.usage.input_tokens": ev.input_tokens,
        "gen_ai.usage.output_tokens": ev.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": ev.cached_input_tokens,
        "gen_ai.usage.cache_creation.input_tokens": ev.cache_write_tokens,
        "llmbudget.usage.reasoning_tokens": ev.reasoning_tokens,
        "llmbudget.event_id": ev.id,
        "llmbudget.backend": ev.backend,
        "llmbudget.status": ev.status,
        "llmbudget.price_status": ev.price_status,
        "llmbudget.streamed": ev.streamed,
        "llmbudget.source": ev.source,
    }
    if ev.cost_usd is not None:
        attrs["llmbudget.cost_usd"] = str(ev.cost_usd)
    if ev.agent:
        attrs["gen_ai.agent.name"] = ev.agent
        attrs["llmbudget.agent"] = ev.agent
    if ev.session:
        attrs["gen_ai.conversation.id"] = ev.session
    for name in _PLAIN_ATTRIBUTION:
        v = getattr(ev, name)
        if v:
            attrs[f"llmbudget.{name}"] = v
    if ev.http_status is not None:
        attrs["http.response.status_code"] = ev.http_status
    if ev.status in ("error", "interrupted", "blocked"):
        attrs["error.type"] = str(ev.http_status) if ev.http_status and ev.http_status >= 400 else ev.status
    return attrs


def _operation(ev: UsageEvent) -> str:
    return "embeddings" if "embed" in (ev.model or "") else "chat"


class OtelExport:
    """Spans and metrics for every recorded event, kept in `services.otel`."""

    def __init__(
        self,
        endpoint: str | None,
        *,
        service_name: str = "llmbudget",
        span_exporter: Any = None,
        metric_reader: Any = None,
        export_interval_s: float = 15.0,
    ) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.hooked = False
        base = (endpoint or "").rstrip("/")
        if span_exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces")
        if metric_reader is None:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            metric_reader = PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{base}/v1/metrics"),
                export_interval_millis=export_interval_s * 1000,
            )
        resource = Resource.create({"service.name": service_name, "service.version": __version__})
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        self.tracer = self.tracer_provider.get_tracer("llmbudget", __version__)
        views = [
            View(
                instrument_name="gen_ai.client.token.usage",
                aggregation=ExplicitBucketHistogramAggregation(list(TOKEN_BUCKETS)),
            ),
            View(
                instrument_name="gen_ai.client.operation.duration",
                aggregation=ExplicitBucketHistogramAggregation(list(DURATION_BUCKETS)),
            ),
        ]
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[metric_reader], views=views)
        meter = self.meter_provider.get_meter("llmbudget", __version__)
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used"
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration"
        )
        self.cost = meter.create_counter("llmbudget.cost", unit="USD", description="Spend in USD")

    def on_events(self, events: Iterable[UsageEvent]) -> None:
        """One span and the metric points of each recorded call (the fan-out's thread calls this)."""
        for ev in events:
            try:
                self._export(ev)
            except Exception:  # telemetry never stops the fan-out
                log.exception("otel_export_failed id=%s", ev.id)

    def _export(self, ev: UsageEvent) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        attrs = span_attributes(ev)
        end_ns = int(ev.timestamp.timestamp() * 1e9)
        start_ns = end_ns - int((ev.duration_ms or 0.0) * 1e6)
        op = attrs["gen_ai.operation.name"]
        span = self.tracer.start_span(
            f"{op} {attrs['gen_ai.request.model']}",
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=start_ns,
        )
        if "error.type" in attrs:
            span.set_status(Status(StatusCode.ERROR, ev.reason or ev.status))
        span.end(end_time=end_ns)
        common = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": ev.provider,
            "gen_ai.request.model": attrs["gen_ai.request.model"],
            "gen_ai.response.model": ev.model,
        }
        self.tokens.record(ev.input_tokens, {**common, "gen_ai.token.type": "input"})
        self.tokens.record(ev.output_tokens, {**common, "gen_ai.token.type": "output"})
        if ev.duration_ms is not None:
            duration_attrs = (
                common if "error.type" not in attrs else {**common, "error.type": attrs["error.type"]}
            )
            self.duration.record(ev.duration_ms / 1000.0, duration_attrs)
        if ev.cost_usd is not None:
            self.cost.add(
                float(ev.cost_usd), {"backend": ev.backend, "model": ev.model, "agent": ev.agent or "unknown"}
            )

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        self.meter_provider.force_flush()

    def close(self) -> None:
        """Export what is pending and stop (at shutdown)."""
        try:
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown()
        except Exception as e:  # a collector gone at shutdown: nothing more to do
            log.warning("otel_shutdown_failed error=%s", type(e).__name__)


def install_otel(services: Services, hub: Any) -> OtelExport | None:
    """Feed an exporter from the fan-out: the one in `services.otel`, else one built when an
    endpoint is configured. None when off."""
    exporter = services.otel
    if not isinstance(exporter, OtelExport):
        endpoint = otel_endpoint(services.config)
        if endpoint is None:
            return None
        try:
            exporter = OtelExport(endpoint, service_name=services.config.otel.service_name)
        except ImportError:
            raise ConfigError(
                "otel.endpoint (or $OTEL_EXPORTER_OTLP_ENDPOINT) is set but OpenTelemetry is not "
                "installed: pip install 'llmbudget[otel]'",
                key="otel.endpoint",
            ) from None
        services.otel = exporter
    if not exporter.hooked:
        hub.add_local_listener(exporter.on_events)
        exporter.hooked = True
    return exporter
