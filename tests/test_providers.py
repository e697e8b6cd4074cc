"""Provider probes against fake provider servers on 127.0.0.1; plugin registry; the providers: config section."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from importlib.metadata import entry_points
from typing import Any

import pytest
from quota_fakes import FakeProviders, fake_providers

from llmbudget.config import parse_config
from llmbudget.errors import ConfigError
from llmbudget.quota.probe import probe_all
from llmbudget.quota.providers import ENTRY_POINT_GROUP, get_provider, known_kinds
from llmbudget.quota.readings import QuotaReading
from llmbudget.quota.settings import BUILTIN_KINDS, ProviderConfig
from llmbudget.quota.severity import Severity, assess

KEY = "sk-test-abcdef123456"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    with fake_providers() as f:
        yield f


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)


def acct(fake: FakeProviders, scenario: str, kind: str, **kw: Any) -> ProviderConfig:
    return ProviderConfig(
        name=kw.pop("name", scenario), kind=kind, base_url=fake.url(scenario), api_key_env="FAKE_KEY", **kw
    )


def probe(*accounts: ProviderConfig) -> list[QuotaReading]:
    return asyncio.run(probe_all(list(accounts)))


def probe_one(account: ProviderConfig) -> QuotaReading:
    (r,) = probe(account)
    return r


def test_unified_ok(fake: FakeProviders) -> None:
    r = probe_one(acct(fake, "unified-ok", "anthropic-unified"))
    assert r.source == "probe" and r.backend == "unified-ok" and r.provider == "anthropic-unified"
    assert r.status == "allowed" and r.key_valid is True and r.http_status == 200
    assert r.windows["5h"].utilization == pytest.approx(0.42)
    assert r.windows["7d"].utilization == pytest.approx(0.5)
    assert assess(r).severity is Severity.OK
    # one minimal call, the key sent as x-api-key, nothing else
    _scenario, method, path, headers, body = [q for q in fake.requests if q[0] == "unified-ok"][-1]
    assert (method, path) == ("POST", "v1/messages")
    assert body["max_tokens"] == 1
    assert headers["x-api-key"] == KEY


def test_unified_oauth_token_is_sent_as_bearer(fake: FakeProviders, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "sk-ant-oat01-secret")
    probe_one(acct(fake, "unified-ok", "anthropic-unified"))
    headers = [q for q in fake.requests if q[0] == "unified-ok"][-1][3]
    assert headers["Authorization"] == "Bearer sk-ant-oat01-secret"
    assert "x-api-key" not in {k.lower() for k in headers}


@pytest.mark.parametrize(
    ("scenario", "kind", "severity", "fragment"),
    [
        ("unified-warn", "anthropic-unified", Severity.WARNING, "7d window at 86%"),
        ("unified-rejected", "anthropic-unified", Severity.CRITICAL, "rejected"),
        ("unified-oi", "anthropic-unified", Severity.WARNING, "7d_oi window at 93%"),
        ("openai-maxed", "openai", Severity.CRITICAL, "requests remaining 0"),
        ("no-headers", "anthropic-api", Severity.UNKNOWN, "no rate-limit headers"),
        ("garbage", "anthropic-unified", Severity.UNKNOWN, "5h-utilization: not a number"),
        ("invalid-401", "openai", Severity.CRITICAL, "invalid key (HTTP 401)"),
        ("invalid-403", "anthropic-unified", Severity.CRITICAL, "invalid key (HTTP 403)"),
        ("gemini-429", "gemini", Severity.CRITICAL, "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
        ("gemini-badkey", "gemini", Severity.CRITICAL, "invalid key"),
        ("openrouter-empty", "openrouter", Severity.CRITICAL, "out of credit"),
        ("server-error", "openai", Severity.UNKNOWN, "HTTP 500"),
    ],
)
def test_severity_per_scenario(
    fake: FakeProviders, scenario: str, kind: str, severity: Severity, fragment: str
) -> None:
    r = probe_one(acct(fake, scenario, kind))
    a = assess(r)
    assert a.severity is severity, a.reasons
    assert any(fragment in x for x in a.reasons), a.reasons


def test_anthropic_api_rfc3339_z_and_offsets(fake: FakeProviders) -> None:
    r = probe_one(acct(fake, "api-ok", "anthropic-api"))
    assert r.reason is None and assess(r).severity is Severity.OK
    tokens = r.limits["tokens"]
    assert tokens.remaining == 60000 and tokens.reset is not None
    # +05:30 offset parsed to the right instant: about 30 s after the probe
    assert 0 < (tokens.reset - r.timestamp).total_seconds() <= 31
    out = r.limits["output_tokens"].reset
    assert out is not None and 0 < (out - r.timestamp).total_seconds() <= 6


def test_openai_go_durations_and_xai_minus_one(fake: FakeProviders) -> None:
    o, x = probe(acct(fake, "openai-ok", "openai"), acct(fake, "xai-minus1", "xai"))
    reset = o.limits["tokens"].reset
    assert reset is not None and (reset - o.timestamp).total_seconds() == pytest.approx(3723.5)
    assert o.limits["tokens"].remaining == 150000
    assert x.limits["requests"].unlimited and x.reason is None
    assert assess(x).severity is Severity.OK
    assert x.provider == "xai"
    body = [q for q in fake.requests if q[0] == "xai-minus1"][-1][4]
    assert body["max_tokens"] == 1 and body["model"] == "grok-3-mini"


def test_gemini_quota_failure_details(fake: FakeProviders) -> None:
    r = probe_one(acct(fake, "gemini-429", "gemini"))
    assert r.http_status == 429 and r.retry_delay_s == 43
    (v,) = r.violations
    assert v["quota_value"] == "1000" and v["dimensions"]["model"] == "gemini-2.5-flash-lite"
    path, headers = [q for q in fake.requests if q[0] == "gemini-429"][-1][2:4]
    assert path == "v1beta/models/gemini-2.5-flash-lite:generateContent"
    assert headers["x-goog-api-key"] == KEY  # in a header, never in the URL
    ok = probe_one(acct(fake, "gemini-ok", "gemini"))
    assert assess(ok).severity is Severity.OK and ok.key_valid is True
    bad = probe_one(acct(fake, "gemini-badkey", "gemini"))
    assert bad.key_valid is False


def test_openrouter_credit_via_key_endpoint(fake: FakeProviders) -> None:
    r = probe_one(acct(fake, "openrouter-ok", "openrouter"))
    assert (r.limit_usd, r.usage_usd, r.credit_usd) == (Decimal(20), Decimal("4.5"), Decimal("15.5"))
    assert assess(r).severity is Severity.OK
    method, path = [q for q in fake.requests if q[0] == "openrouter-ok"][-1][1:3]
    assert (method, path) == ("GET", "api/v1/key")
    nolimit = probe_one(acct(fake, "openrouter-nolimit", "openrouter"))
    assert nolimit.credit_usd is None and assess(nolimit).severity is Severity.OK


def test_cost_header_proxy(fake: FakeProviders) -> None:
    r = probe_one(acct(fake, "cost-proxy", "cost-header-proxy", model="gpt-4o-mini"))
    assert r.cost_usd == Decimal("0.000415") and r.credit_usd == Decimal("7.5")
    assert r.limits["tokens"].remaining == 9000
    assert assess(r).severity is Severity.OK


def test_invalid_key_never_leaks_the_key(fake: FakeProviders) -> None:
    r = probe_one(acct(fake, "invalid-401", "openai"))
    assert r.key_valid is False
    assert KEY not in str(r.to_dict()) and "[redacted]" in (r.reason or "")


def test_hanging_provider_cut_while_others_report(fake: FakeProviders) -> None:
    hang = acct(fake, "hang", "anthropic-unified", probe_timeout_s=0.3)
    rs = probe(hang, acct(fake, "unified-ok", "anthropic-unified"), acct(fake, "openai-ok", "openai"))
    assert [r.backend for r in rs] == ["hang", "unified-ok", "openai-ok"]
    assert rs[0].reason == "timed out after 0.3s" and assess(rs[0]).severity is Severity.UNKNOWN
    assert [assess(r).severity for r in rs[1:]] == [Severity.OK, Severity.OK]


def test_accounts_are_probed_concurrently(fake: FakeProviders) -> None:
    """Each barrier answer waits until all three probes are in flight: only concurrent probes get through."""
    accounts = [
        acct(fake, "barrier-conc-3", "anthropic-unified", name=f"seat-{i}", probe_timeout_s=5)
        for i in range(3)
    ]
    rs = probe(*accounts)
    assert [r.backend for r in rs] == ["seat-0", "seat-1", "seat-2"]
    assert [assess(r).severity for r in rs] == [Severity.OK] * 3, [r.reason for r in rs]
    assert fake.hits("barrier-conc-3") == 3


def test_missing_key_and_refused_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAKE_KEY")
    a = ProviderConfig(name="a", kind="openai", base_url="http://127.0.0.1:9", api_key_env="FAKE_KEY")
    (r,) = probe(a)
    assert r.reason == "no API key: $FAKE_KEY is not set"
    monkeypatch.setenv("FAKE_KEY", KEY)
    (r,) = probe(a)  # port 9 (discard) is closed here
    assert r.reason is not None and r.reason.startswith("connection failed")
    assert assess(r).severity is Severity.UNKNOWN


# ------------------------------------------------------------------ plugins


def test_openrouter_comes_through_the_entry_point() -> None:
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert eps["openrouter"].value == "llmbudget.quota.providers.openrouter:OpenRouterProvider"
    assert "openrouter" in known_kinds() and set(BUILTIN_KINDS) <= set(known_kinds())
    assert get_provider("openrouter").kind == "openrouter"


def test_a_plugin_kind_loads_and_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party kind registered under the entry point group is accepted by the config and probed."""
    import importlib.metadata as md
    import sys
    import types

    from llmbudget.quota import kinds

    mod = types.ModuleType("fake_quota_plugin")

    class Static:
        kind = "static"

        async def probe(self, account: ProviderConfig, session: Any) -> list[QuotaReading]:
            from llmbudget.quota.providers.base import utcnow

            return [
                QuotaReading(
                    timestamp=utcnow(),
                    backend="ignored",
                    provider="static",
                    status="allowed",
                    extra={"greeting": account.options["greeting"]},
                )
            ]

    mod.Static = Static  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_quota_plugin", mod)
    ep = md.EntryPoint(name="static", value="fake_quota_plugin:Static", group=ENTRY_POINT_GROUP)
    real = kinds.plugins
    monkeypatch.setattr(kinds, "plugins", lambda: {**real(), "static": ep})
    cfg, _ = parse_config("providers:\n  - {name: mine, kind: static, options: {greeting: hi}}\n", "c.yaml")
    (r,) = probe(cfg.providers[0])
    assert (r.backend, r.provider, r.extra["greeting"]) == ("mine", "static", "hi")
    with pytest.raises(ConfigError, match="plugins: static"):
        parse_config("providers:\n  - {name: a, kind: nope}\n", "c.yaml")
    assert assess(r).severity is Severity.OK


# ------------------------------------------------------------------ config


def test_providers_config_parses() -> None:
    text = (
        "providers:\n"
        "  - name: max-1\n    kind: anthropic-unified\n    api_key_env: CLAUDE_TOKEN_1\n"
        "  - {name: or, kind: openrouter, api_key_env: OPENROUTER_API_KEY, probe_timeout_s: 3}\n"
    )
    cfg, _ = parse_config(text, "llmbudget.yaml")
    assert [p.name for p in cfg.providers] == ["max-1", "or"]
    assert cfg.providers[0].probe_timeout_s == 10 and cfg.providers[1].probe_timeout_s == 3


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("providers:\n  - name: a\n    kind: antropic\n", "c.yaml:3", "valid kinds: anthropic-unified"),
        ("providers:\n  - {name: a, kind: openai}\n  - {name: a, kind: xai}\n", "c.yaml:", "used twice"),
        (
            "providers:\n  - name: a\n    kind: openai\n    api_key_env: sk-abc123\n",
            "c.yaml:4",
            "NAME of an environment",
        ),
        ("providers:\n  - {name: p, kind: cost-header-proxy}\n", "c.yaml:2", "needs `base_url`"),
        ("providers:\n  - name: a\n    kind: openai\n    probe_timeout_s: 0\n", "c.yaml:4", "greater than 0"),
        ("providers:\n  - name: a\n    kind: openai\n    colour: red\n", "c.yaml:4", "unknown key"),
    ],
)
def test_providers_config_errors_name_file_and_line(text: str, where: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.yaml")
    assert str(e.value).startswith(where) and fragment in str(e.value), str(e.value)


def test_unknown_kind_lists_the_kinds() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("providers:\n  - {name: a, kind: nope}\n", "c.yaml")
    assert (
        "openrouter" in str(e.value) and "gemini" in str(e.value) and "(no plugins installed)" in str(e.value)
    )
