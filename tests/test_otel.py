"""OpenTelemetry export: one real span per call with the GenAI attributes (in-memory exporter of the
OTel SDK), the metrics beside it, and OTLP/HTTP protobuf to a local receiver; nothing of OpenTelemetry
is imported when no endpoint is configured."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anthropic
import openai
import pytest
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from llmbudget.config import Config
from llmbudget.otel import OtelExport


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def _config(fake: FakeUpstream, **top: Any) -> Config:
    return Config.model_validate(
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": fake.url, "provider": "openai"},
                "anthropic": {"kind": "anthropic", "base_url": fake.url, "provider": "anthropic"},
            },
            **top,
        }
    )


def _calls(proxy: RunningProxy) -> None:
    openai.OpenAI(
        base_url=f"{proxy.url}/openai/v1",
        api_key="sk-test",
        default_headers={"X-LLMBudget-Agent": "planner", "X-LLMBudget-Session": "s-1"},
        max_retries=0,
    ).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    claude = anthropic.Anthropic(
        base_url=f"{proxy.url}/anthropic",
        api_key="sk-ant-test",
        default_headers={"X-LLMBudget-Agent": "coder"},
        max_retries=0,
    )
    with claude.messages.stream(
        model="claude-sonnet-4-20250514", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        stream.get_final_message()


def test_one_span_per_call_with_gen_ai_attributes(fake: FakeUpstream, tmp_path: Path) -> None:
    spans_out, reader = InMemorySpanExporter(), InMemoryMetricReader()
    export = OtelExport(None, span_exporter=spans_out, metric_reader=reader)
    with running_proxy(_config(fake), tmp_path / "l.db", parts={"otel": export}) as proxy:
        _calls(proxy)
        events = {e.id: e for e in proxy.wait_events(2)}
        deadline = time.monotonic() + 5
        while len(spans_out.get_finished_spans()) < 2 and time.monotonic() < deadline:
            export.flush()
            time.sleep(0.05)
        spans = spans_out.get_finished_spans()
        assert len(spans) == 2
        for span in spans:
            a = dict(span.attributes or {})
            ev = events[a["llmbudget.event_id"]]
            assert span.kind == SpanKind.CLIENT
            assert span.name == f"chat {ev.request_model or ev.model}"
            assert a["gen_ai.provider.name"] == ev.provider
            assert a["gen_ai.response.model"] == ev.model
            assert a["gen_ai.usage.input_tokens"] == ev.input_tokens > 0
            assert a["gen_ai.usage.output_tokens"] == ev.output_tokens > 0
            assert a["gen_ai.usage.cache_read.input_tokens"] == ev.cached_input_tokens > 0
            assert a["gen_ai.usage.cache_creation.input_tokens"] == ev.cache_write_tokens
            assert a["llmbudget.cost_usd"] == str(ev.cost_usd)
            assert a["gen_ai.agent.name"] == ev.agent
            assert span.end_time is not None and span.start_time is not None
            assert span.end_time - span.start_time == int(ev.duration_ms * 1e6)
        anth = next(
            dict(s.attributes or {}) for s in spans if s.attributes["gen_ai.provider.name"] == "anthropic"
        )  # type: ignore[index]
        assert anth["gen_ai.usage.cache_creation.input_tokens"] > 0
        openai_span = next(
            dict(s.attributes or {}) for s in spans if s.attributes["gen_ai.provider.name"] == "openai"
        )  # type: ignore[index]
        assert openai_span["gen_ai.conversation.id"] == "s-1"

        data = reader.get_metrics_data()
        metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        usage = metrics["gen_ai.client.token.usage"]
        inputs = sum(p.sum for p in usage.data.data_points if p.attributes["gen_ai.token.type"] == "input")
        assert inputs == sum(e.input_tokens for e in events.values())
        assert sum(p.count for p in metrics["gen_ai.client.operation.duration"].data.data_points) == 2
        cost = sum(p.value for p in metrics["llmbudget.cost"].data.data_points)
        assert cost == pytest.approx(float(sum(e.cost_usd for e in events.values())))


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append((self.path, self.rfile.read(n)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_http_protobuf_reaches_a_collector(fake: FakeUpstream, tmp_path: Path) -> None:
    _Receiver.bodies = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
        cfg = _config(fake, otel={"endpoint": endpoint, "service_name": "llmb-test"})
        with running_proxy(cfg, tmp_path / "l.db") as proxy:
            _calls(proxy)
            events = proxy.wait_events(2)
            export = proxy.services.otel
            deadline = time.monotonic() + 5
            while not any(p == "/v1/traces" for p, _ in _Receiver.bodies) and time.monotonic() < deadline:
                export.flush()
                time.sleep(0.1)
        spans = []
        for path, body in _Receiver.bodies:
            if path != "/v1/traces":
                continue
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                service = {kv.key: kv.value.string_value for kv in rs.resource.attributes}["service.name"]
                assert service == "llmb-test"
                for ss in rs.scope_spans:
                    spans += list(ss.spans)
        assert len(spans) == 2
        got = {
            {kv.key: kv.value for kv in s.attributes}["llmbudget.event_id"].string_value: {
                kv.key: kv.value for kv in s.attributes
            }
            for s in spans
        }
        for ev in events:
            a = got[ev.id]
            assert a["gen_ai.usage.input_tokens"].int_value == ev.input_tokens
            assert a["gen_ai.usage.output_tokens"].int_value == ev.output_tokens
            assert a["gen_ai.usage.cache_read.input_tokens"].int_value == ev.cached_input_tokens
        assert any(p == "/v1/metrics" for p, _ in _Receiver.bodies)  # the metrics are flushed at shutdown
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_nothing_of_opentelemetry_is_imported_when_off(tmp_path: Path) -> None:
    code = f"""
import sys
from llmbudget.app import build_app
from llmbudget.config import Config
from llmbudget.services import Services
s = Services.create(Config(), db_url="sqlite:///{tmp_path / "x.db"}")
build_app(s)
assert s.otel is None
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
s.close()
"""
    env = {"PATH": "/usr/bin:/bin", "LLMBUDGET_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_bad_endpoint_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Config.model_validate({"otel": {"endpoint": "collector:4318"}})
