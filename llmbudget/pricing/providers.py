"""Our provider names: spellings folded to ours, mapped to genai-prices' ids, guessed for a call.

A call's provider comes from its upstream host, else its wire protocol, else its model name
(`provider_for`); the price book looks it up under genai-prices' id (`PROVIDER_IDS`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..wire import PROTOCOLS

#: our provider names (events, config) -> genai-prices provider ids
PROVIDER_IDS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "gemini": "google",
    "vertex": "google",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "grok": "x-ai",
    "deepseek": "deepseek",
    "openrouter": "openrouter",
    "mistral": "mistral",
    "groq": "groq",
    "together": "together",
    "fireworks": "fireworks",
    "cerebras": "cerebras",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "azure": "azure",
    "bedrock": "aws",
    "aws": "aws",
    "moonshot": "moonshotai",
    "moonshotai": "moonshotai",
    "zai": "zai",
    "huggingface": "huggingface",
}

#: providers that never price anything (their calls are `local` or `unpriced` by name alone)
_NO_PROVIDER = frozenset({"", "unknown", "local", "none"})


def norm_provider(provider: str | None) -> str | None:
    """Our provider name, lower-cased and with genai-prices' spellings folded to ours (x-ai -> xai)."""
    if provider is None:
        return None
    p = provider.strip().lower()
    if p in _NO_PROVIDER:
        return None if p != "local" else "local"
    return {
        "x-ai": "xai",
        "gemini": "google",
        "vertex": "google",
        "bedrock": "aws",
        "moonshotai": "moonshot",
    }.get(p, p)


_HOSTS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    ("openai.azure.com", "azure"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "google"),
    ("aiplatform.googleapis.com", "google"),
    ("api.x.ai", "xai"),
    ("api.deepseek.com", "deepseek"),
    ("openrouter.ai", "openrouter"),
    ("api.mistral.ai", "mistral"),
    ("api.groq.com", "groq"),
    ("api.together.xyz", "together"),
    ("api.together.ai", "together"),
    ("api.fireworks.ai", "fireworks"),
    ("api.cerebras.ai", "cerebras"),
    ("api.perplexity.ai", "perplexity"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
    ("api.moonshot.ai", "moonshot"),
    ("api.moonshot.cn", "moonshot"),
    ("amazonaws.com", "aws"),
)
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "host.docker.internal"})
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"),
    ("chatgpt", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("text-embedding", "openai"),
    ("davinci", "openai"),
    ("babbage", "openai"),
    ("whisper", "openai"),
    ("tts-", "openai"),
    ("dall-e", "openai"),
    ("codex", "openai"),
    ("claude", "anthropic"),
    ("gemini", "google"),
    ("gemma", "google"),
    ("grok", "xai"),
    ("deepseek", "deepseek"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("codestral", "mistral"),
    ("magistral", "mistral"),
    ("ministral", "mistral"),
    ("pixtral", "mistral"),
    ("devstral", "mistral"),
    ("command", "cohere"),
    ("kimi", "moonshot"),
    ("sonar", "perplexity"),
)


def provider_for(model: str, base_url: str | None = None, kind: str | None = None) -> str:
    """Best guess of our provider name for a call: by upstream host, then wire protocol, then model name."""
    if base_url:
        try:
            host = (urlsplit(base_url if "//" in base_url else f"//{base_url}").hostname or "").lower()
        except ValueError:
            host = ""
        if host in _LOCAL_HOSTS or host.endswith(".localhost") or host.startswith("127."):
            return "local"
        for suffix, name in _HOSTS:
            if host == suffix or host.endswith("." + suffix):
                return name
    protocol = PROTOCOLS.get(kind or "")
    if protocol is not None and protocol.names_provider:
        return protocol.provider
    m = (model or "").strip().lower()
    if "/" in m and base_url is None:
        m = m.split("/", 1)[1]  # "openai/gpt-4o" style names without a host
    for prefix, name in _MODEL_PREFIXES:
        if m.startswith(prefix):
            return name
    return "unknown"
