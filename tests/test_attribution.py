"""Attribution with no set-up: known agent clients' own headers, `attribution.rules`, precedence.

Each client's header set is the one it sends (captured from Claude Code 2.1 and Codex 0.17x through
the proxy, read from the others' source); the end-to-end tests send them through the real proxy
with the official SDKs' `default_headers`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget.attribution import AttributionConfig, AttributionRule
from llmbudget.capture.clients import Attributor
from llmbudget.config import Config, parse_config
from llmbudget.errors import ConfigError
from llmbudget.events import anthropic_call_id
from llmbudget.quota import claude_code as cc

SID = "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"

#: (client, headers as sent, expected agent, expected session)
CLIENTS: list[tuple[str, dict[str, str], str, str | None]] = [
    (
        "claude-code",
        {
            "user-agent": "claude-cli/2.1.197 (external, sdk-cli)",
            "x-app": "cli",
            "x-claude-code-session-id": SID,
            "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
            "anthropic-version": "2023-06-01",
            "x-stainless-lang": "js",
            "x-stainless-package-version": "0.60.0",
        },
        "claude-code",
        SID,
    ),
    (
        "codex",
        {
            "user-agent": "codex_cli_rs/0.172.0 (Ubuntu 24.4.0; x86_64) xterm-256color",
            "originator": "codex_cli_rs",
            "session-id": SID,
            "thread-id": SID,
            "accept": "text/event-stream",
        },
        "codex",
        SID,
    ),
    (
        "codex-older",
        {
            "user-agent": "codex_cli_rs/0.38.0 (Ubuntu 24.04.2 LTS; x86_64) WindowsTerminal",
            "originator": "codex_cli_rs",
            "version": "0.38.0",
            "conversation_id": SID,
            "session_id": SID,
        },
        "codex",
        SID,
    ),
    (
        "codex-exec",
        {"user-agent": "codex_exec/0.172.0 (Mac OS 15.1.0; arm64)", "originator": "codex_exec"},
        "codex",
        None,
    ),
    (
        "gemini-cli",
        {
            "user-agent": "GeminiCLI/0.24.0/gemini-2.5-pro (linux; x64; terminal)",
            "x-goog-api-client": "google-genai-sdk/1.30.0 gl-node/v22.17.0",
        },
        "gemini-cli",
        None,
    ),
    (
        "openai-agents",
        {"user-agent": "Agents/Python 0.3.2", "x-stainless-lang": "python"},
        "openai-agents",
        None,
    ),
    ("pydantic-ai", {"user-agent": "pydantic-ai/1.0.10"}, "pydantic-ai", None),
    ("litellm", {"user-agent": "litellm/1.77.0"}, "litellm", None),
    ("aider", {"http-referer": "https://aider.chat", "x-title": "Aider"}, "aider", None),
    ("openrouter-app", {"x-title": "research-bot"}, "research-bot", None),
]


def raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


@pytest.mark.parametrize(("client", "headers", "agent", "session"), CLIENTS, ids=[c[0] for c in CLIENTS])
def test_known_client_headers(client: str, headers: dict[str, str], agent: str, session: str | None) -> None:
    attribution: dict[str, Any] = {}
    Attributor().fill(raw(headers), attribution)
    assert attribution.get("agent") == agent
    assert attribution.get("session") == session


def test_plain_sdk_headers_infer_nothing() -> None:
    attribution: dict[str, Any] = {}
    Attributor().fill(raw({"user-agent": "OpenAI/Python 1.99.0", "x-stainless-lang": "python"}), attribution)
    assert attribution == {}


def test_explicit_values_win_and_rules_beat_clients() -> None:
    rules = [
        AttributionRule(header="x-team-name", field="team"),
        AttributionRule(header="user-agent", regex=r"^claude-cli/(\S+)", field="tags.cc_version"),
        AttributionRule(header="user-agent", regex=r"^claude-cli/", field="agent", value="planner"),
    ]
    a = Attributor(rules)
    explicit: dict[str, Any] = {"session": "mine", "tags": {"cc_version": "pinned"}}
    a.fill(raw({**CLIENTS[0][1], "x-team-name": " search "}), explicit)
    assert explicit == {
        "session": "mine",
        "agent": "planner",
        "team": "search",
        "tags": {"cc_version": "pinned"},
    }
    fresh: dict[str, Any] = {}
    a.fill(raw(CLIENTS[0][1]), fresh)
    assert fresh["tags"] == {"cc_version": "2.1.197"} and fresh["session"] == SID


def test_rules_equals_regex_and_fixed_values() -> None:
    rules = [
        AttributionRule(header="x-env", equals="prod", field="tags.env", value="production"),
        AttributionRule(header="user-agent", regex=r"^(\w+)-worker/", field="agent"),
        AttributionRule(header="x-ticket", regex=r"T-\d+", field="task_id"),
    ]
    got: dict[str, Any] = {}
    Attributor(rules, infer_clients=False).fill(
        raw({"x-env": "prod", "user-agent": "billing-worker/3", "x-ticket": "see T-42 now"}), got
    )
    assert got == {"tags": {"env": "production"}, "agent": "billing", "task_id": "see T-42 now"}
    other: dict[str, Any] = {}
    Attributor(rules, infer_clients=False).fill(raw({"x-env": "dev", "user-agent": "cli/1"}), other)
    assert other == {}
    assert Attributor.from_config(AttributionConfig(infer_clients=False)) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "attribution:\n  rules:\n    - {header: X-A, field: team, regex: '(unclosed'}\n",
            "c.yaml:3: attribution.rules.0: regex is not a valid regular expression",
        ),
        (
            "attribution:\n  rules:\n    - {header: X-A, field: owner}\n",
            "c.yaml:3: attribution.rules.0.field: field 'owner' is not an attribution field",
        ),
        (
            "attribution:\n  rules:\n    - {header: X-LLMBudget-Agent, field: agent}\n",
            "c.yaml:3: attribution.rules.0.header: X-LLMBudget-* headers are read directly",
        ),
        (
            "attribution:\n  infer_clients: true\n  rules:\n    - {header: X-A, field: team, equals: a, regex: b}\n",
            "c.yaml:4: attribution.rules.0: give at most one of `equals` or `regex`",
        ),
        ("attribution:\n  rulez: []\n", "c.yaml:2: attribution.rulez: unknown key"),
    ],
)
def test_rule_errors_name_file_line_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.yaml")
    assert str(e.value).startswith(message), str(e.value)


# ---------------------------------------------------------------------------- through the real proxy
@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    cfg = Config.model_validate(
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": fake.url, "provider": "openai"},
                "anthropic": {"kind": "anthropic", "base_url": fake.url, "provider": "anthropic"},
                "gemini": {"kind": "gemini", "base_url": fake.url, "provider": "google"},
            },
            "attribution": {"rules": [{"header": "x-acme-squad", "field": "team"}]},
        }
    )
    with running_proxy(cfg, tmp_path_factory.mktemp("attr") / "ledger.db") as running:
        yield running


def test_claude_code_through_the_proxy(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sid = str(uuid.uuid4())
    headers = {**CLIENTS[0][1], "x-claude-code-session-id": sid, "x-acme-squad": "platform"}
    with anthropic.Anthropic(
        base_url=f"{proxy.url}/anthropic", api_key="sk-ant-test", default_headers=headers
    ) as client:
        with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            stream.until_done()
        raw_resp = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    events = proxy.wait_events(2, session=sid)
    assert [(e.agent, e.session, e.team) for e in events] == [("claude-code", sid, "platform")] * 2
    # the client's own headers still reach the provider; llmbudget's never do
    sent = [r for r in fake.requests if r.get("headers", {}).get("x-claude-code-session-id") == sid]
    assert len(sent) == 2
    # the event id is the one Claude Code's log leads to (request-id), also in the response header
    request_id = raw_resp.headers["request-id"]
    assert raw_resp.headers["x-llmbudget-request-id"] == anthropic_call_id(request_id)
    assert proxy.services.ledger.get(anthropic_call_id(request_id) or "") is not None


def test_explicit_header_beats_the_clients_session(proxy: RunningProxy) -> None:
    sid = str(uuid.uuid4())
    headers = {**CLIENTS[0][1], "x-claude-code-session-id": str(uuid.uuid4()), "X-LLMBudget-Session": sid}
    with anthropic.Anthropic(
        base_url=f"{proxy.url}/anthropic", api_key="sk-ant-test", default_headers=headers
    ) as client:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    (event,) = proxy.wait_events(1, session=sid)
    assert event.agent == "claude-code"


def test_codex_and_openai_agents_through_the_proxy(proxy: RunningProxy) -> None:
    sid = str(uuid.uuid4())
    codex = {k: v for k, v in CLIENTS[1][1].items() if k != "accept"}
    with openai.OpenAI(
        base_url=f"{proxy.url}/openai/v1", api_key="sk-test", default_headers={**codex, "session-id": sid}
    ) as client:
        client.responses.create(model="gpt-5-codex", input="hi")
    (event,) = proxy.wait_events(1, session=sid)
    assert event.agent == "codex"
    marker = str(uuid.uuid4())
    with openai.OpenAI(
        base_url=f"{proxy.url}/openai/v1",
        api_key="sk-test",
        default_headers={**CLIENTS[5][1], "X-LLMBudget-Task": marker},
    ) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    proxy.wait_events(1, task_id=marker)
    (event,) = proxy.events(task_id=marker)
    assert event.agent == "openai-agents"


def test_gemini_cli_through_the_proxy(proxy: RunningProxy) -> None:
    marker = str(uuid.uuid4())
    r = httpx.post(
        f"{proxy.url}/gemini/v1beta/models/gemini-2.5-flash:generateContent",
        headers={**CLIENTS[4][1], "x-goog-api-key": "k", "X-LLMBudget-Task": marker},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert r.status_code == 200
    (event,) = proxy.wait_events(1, task_id=marker)
    assert event.agent == "gemini-cli"


def test_a_call_seen_by_the_proxy_and_in_claude_codes_log_counts_once(
    proxy: RunningProxy, tmp_path: Path
) -> None:
    sid = str(uuid.uuid4())
    headers = {**CLIENTS[0][1], "x-claude-code-session-id": sid}
    with anthropic.Anthropic(
        base_url=f"{proxy.url}/anthropic", api_key="sk-ant-test", default_headers=headers
    ) as client:
        resp = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    message = resp.parse()
    proxy.wait_events(1, session=sid)
    # what Claude Code logs for that response: message id, the request-id header as requestId
    line = {
        "type": "assistant",
        "sessionId": sid,
        "cwd": "/work/app",
        "timestamp": "2026-11-20T09:00:00Z",
        "requestId": resp.headers["request-id"],
        "message": {"id": message.id, "model": message.model, "usage": message.usage.model_dump()},
    }
    log = tmp_path / "projects" / "-work-app" / f"{sid}.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps(line) + "\n")
    result = cc.import_claude_code(proxy.services.ledger, [str(tmp_path)], proxy.services.prices)
    assert (result.responses, result.new) == (1, 0)
    assert len(proxy.events(session=sid)) == 1
