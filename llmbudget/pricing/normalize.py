"""Token semantics per provider, normalized to one shape so nothing is counted twice.

`TokenUsage` follows the UsageEvent semantics (and genai-prices'
`Usage`): `input_tokens` INCLUDES cached reads and cache writes, `output_tokens` INCLUDES
reasoning. Each provider reports differently:

- OpenAI chat/completions (also xAI, DeepSeek, OpenRouter, vLLM, Ollama): `prompt_tokens`
  already include `prompt_tokens_details.cached_tokens`; `completion_tokens` include
  `completion_tokens_details.reasoning_tokens` (xAI excludes them: detected, see below).
- OpenAI Responses: `input_tokens` include `input_tokens_details.cached_tokens`;
  `output_tokens` include `output_tokens_details.reasoning_tokens`.
- Anthropic: `input_tokens` EXCLUDE `cache_read_input_tokens` and
  `cache_creation_input_tokens`: they are added.
- Gemini: `promptTokenCount` includes `cachedContentTokenCount`; `thoughtsTokenCount` is
  separate from `candidatesTokenCount` and is added to output; `toolUsePromptTokenCount`
  is separate from the prompt and is added to input.

Every function is tolerant: a missing, None, negative, boolean or non-numeric field
counts as zero, a non-mapping argument gives all zeros, and nothing ever raises. The
result always satisfies `cached + cache_write <= input` and `reasoning <= output`, so it
can go straight into a `UsageEvent`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..events import UNIT_KEYS

__all__ = [
    "TokenUsage",
    "anthropic_usage",
    "gemini_usage",
    "openai_chat_usage",
    "openai_embeddings_usage",
    "openai_responses_usage",
]


def _int(value: Any) -> int:
    """A token count from whatever the provider sent: non-negative int, else 0."""
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if value > 0 else 0
    if isinstance(value, float):
        if not math.isfinite(value) or value <= 0:
            return 0
        return int(value)
    if isinstance(value, Decimal):
        if not value.is_finite() or value <= 0:
            return 0
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        # some gateways send counts as strings; only plain ASCII digits ('²' is a digit to isdigit()
        # but not to int()), and not so many that int() refuses the conversion
        if s.isascii() and s.isdigit() and len(s) <= 18:
            return int(s)
    return 0


def _get(obj: Any, *path: str) -> Any:
    """Walk nested mappings; None when any step is missing or not a mapping."""
    for key in path:
        if type(obj) is not dict and not isinstance(obj, Mapping):  # dict first: the parsed-JSON case
            return None
        obj = obj.get(key)
    return obj


def _has(obj: Any, *path: str) -> bool:
    return _get(obj, *path) is not None


def _units(pairs: Any) -> tuple[tuple[str, int], ...]:
    """Positive counts of known extra units, sorted by key (hashable, one canonical form)."""
    if not pairs:
        return ()
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    out: dict[str, int] = {}
    for k, v in items:
        if not v:  # the common case: None or 0
            continue
        n = _int(v)
        if n and k in UNIT_KEYS:
            out[k] = out.get(k, 0) + n
    return tuple(sorted(out.items()))


def _tier(value: Any) -> str | None:
    if isinstance(value, str):
        v = value.strip()
        if v and len(v) <= 64:
            return v
    return None


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """One call's tokens. `input_tokens` include cached reads and cache writes; `output_tokens` include reasoning.

    `cache_write_1h_tokens` are the part of `cache_write_tokens` written with a one-hour TTL (Anthropic
    prices them higher than 5-minute writes). `units` holds other priced units the provider reported,
    by genai-prices usage key (`input_audio_tokens`, `web_searches`, ...); modality tokens are parts of
    the input or output totals, not additions to them. `service_tier` is the tier that served the call
    as the provider reported it (OpenAI `flex`/`priority`, Anthropic fast mode as `fast`).
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0
    units: tuple[tuple[str, int], ...] = ()
    service_tier: str | None = None

    @classmethod
    def of(
        cls,
        input_tokens: int = 0,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        output_tokens: int = 0,
        reasoning_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        units: Any = None,
        service_tier: Any = None,
    ) -> TokenUsage:
        """Build from possibly inconsistent counts, enforcing the invariants.

        Parts never exceed their totals: when a provider reports more cached (or reasoning)
        tokens than the total, the total is raised to the parts rather than the parts cut,
        since under-counting would under-charge.
        """
        i, c, w = _int(input_tokens), _int(cached_input_tokens), _int(cache_write_tokens)
        o, r, w1h = _int(output_tokens), _int(reasoning_tokens), _int(cache_write_1h_tokens)
        w = max(w, w1h)
        return cls(
            max(i, c + w),
            c,
            w,
            max(o, r),
            r,
            w1h,
            _units(units) if units else (),
            None if service_tier is None else _tier(service_tier),
        )

    @classmethod
    def from_event(cls, event: Any) -> TokenUsage:
        """The token counts of a UsageEvent (or anything with the same attribute names)."""
        return cls.of(
            getattr(event, "input_tokens", 0),
            getattr(event, "cached_input_tokens", 0),
            getattr(event, "cache_write_tokens", 0),
            getattr(event, "output_tokens", 0),
            getattr(event, "reasoning_tokens", 0),
            getattr(event, "cache_write_1h_tokens", 0),
            getattr(event, "units", None),
            getattr(event, "service_tier", None),
        )

    def with_counts(self, **changes: Any) -> TokenUsage:
        """A copy with some fields changed, the invariants enforced again."""
        d: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "units": self.units,
            "service_tier": self.service_tier,
        }
        d.update(changes)
        return TokenUsage.of(**d)

    @property
    def uncached_input_tokens(self) -> int:
        """Input billed at the plain input rate (neither a cache read nor a cache write)."""
        return self.input_tokens - self.cached_input_tokens - self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __bool__(self) -> bool:
        return bool(self.input_tokens or self.output_tokens)

    def __add__(self, other: TokenUsage) -> TokenUsage:
        """Sum of two usages (separate calls, or incremental stream deltas)."""
        if not isinstance(other, TokenUsage):
            return NotImplemented
        units = dict(self.units)
        for k, v in other.units:
            units[k] = units.get(k, 0) + v
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            tuple(sorted(units.items())),
            self.service_tier or other.service_tier,
        )

    def merge_max(self, other: TokenUsage | None) -> TokenUsage:
        """Field-wise maximum: for streams whose usage reports are cumulative.

        Anthropic's `message_start` carries the input and `message_delta` the cumulative
        output (sometimes the input again); Gemini repeats `usageMetadata` growing in
        every chunk. Taking the maximum of each field never double-counts.
        """
        if other is None:
            return self
        units = dict(self.units)
        for k, v in other.units:
            units[k] = max(units.get(k, 0), v)
        return TokenUsage.of(
            max(self.input_tokens, other.input_tokens),
            max(self.cached_input_tokens, other.cached_input_tokens),
            max(self.cache_write_tokens, other.cache_write_tokens),
            max(self.output_tokens, other.output_tokens),
            max(self.reasoning_tokens, other.reasoning_tokens),
            max(self.cache_write_1h_tokens, other.cache_write_1h_tokens),
            units,
            other.service_tier or self.service_tier,
        )

    def as_dict(self) -> dict[str, Any]:
        """The counts, units and tier under UsageEvent's field names (`UsageEvent(**usage.as_dict(), ...)`)."""
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "units": dict(self.units),
            "service_tier": self.service_tier,
        }


ZERO_USAGE = TokenUsage()


def openai_chat_usage(usage: Any, *, reasoning_in_completion: bool | None = None) -> TokenUsage:
    """OpenAI chat/completions `usage` (also xAI, DeepSeek, OpenRouter and other compatible servers).

    `reasoning_in_completion`: whether `completion_tokens` already include the reasoning
    tokens (OpenAI: yes; xAI: no). None detects it: the reasoning is taken as separate
    when it exceeds `completion_tokens` or when `total_tokens` equals
    prompt + completion + reasoning.
    """
    if type(usage) is dict and usage.keys() <= _PLAIN_CHAT_KEYS:
        fast = _plain_chat_usage(usage, reasoning_in_completion)
        if fast is not None:
            return fast
    return _general_chat_usage(usage, reasoning_in_completion)


def _general_chat_usage(usage: Any, reasoning_in_completion: bool | None) -> TokenUsage:
    """`openai_chat_usage` for every shape (the compatible servers' fields included)."""
    if not isinstance(usage, Mapping):
        return ZERO_USAGE
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    # DeepSeek: prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens
    hit = _int(usage.get("prompt_cache_hit_tokens"))
    miss = _int(usage.get("prompt_cache_miss_tokens"))
    if not _has(usage, "prompt_tokens") and not _has(usage, "input_tokens"):
        prompt = hit + miss
    elif not prompt:
        prompt = _int(usage.get("input_tokens"))  # some compatible servers use the Responses names
    if _has(usage, "prompt_tokens_details", "cached_tokens"):
        cached = _int(_get(usage, "prompt_tokens_details", "cached_tokens"))
    elif _has(usage, "prompt_cache_hit_tokens"):
        cached = hit
    else:  # xAI's older top-level field; Anthropic's OpenAI-compatible endpoint
        cached = _int(usage.get("cached_prompt_text_tokens")) or _int(usage.get("cached_tokens"))
    cache_write = _int(_get(usage, "prompt_tokens_details", "cache_write_tokens"))
    if not completion and not _has(usage, "completion_tokens"):
        completion = _int(usage.get("output_tokens"))
    if _has(usage, "completion_tokens_details", "reasoning_tokens"):
        reasoning = _int(_get(usage, "completion_tokens_details", "reasoning_tokens"))
    else:
        reasoning = _int(usage.get("reasoning_tokens"))  # xAI's older top-level field
    output = completion
    if reasoning:
        separate = reasoning_in_completion is False
        if reasoning_in_completion is None:
            total = _int(usage.get("total_tokens"))
            separate = reasoning > completion or (
                _has(usage, "total_tokens") and total == prompt + completion + reasoning
            )
        if separate:
            output = completion + reasoning
    units: dict[str, Any] = {}
    _modalities(usage.get("prompt_tokens_details"), "input", units)
    _modalities(usage.get("completion_tokens_details"), "output", units)
    return TokenUsage.of(prompt, cached, cache_write, output, reasoning, units=units)


#: the keys of OpenAI's own chat `usage`: an object with no others takes `_plain_chat_usage`
_PLAIN_CHAT_KEYS = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    }
)


def _count(details: dict[str, Any] | None, key: str) -> int | None:
    """A detail count that is a plain non-negative int (0 when absent), None for anything else."""
    if details is None:
        return 0
    v = details.get(key)
    if v is None:
        return 0
    return v if type(v) is int and v >= 0 else None


def _plain_chat_usage(usage: dict[str, Any], reasoning_in_completion: bool | None) -> TokenUsage | None:
    """`openai_chat_usage` for OpenAI's own shape with plain non-negative integers (the proxy's usual
    answer), in a few lookups; None for anything else, which the general reading takes."""
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if type(prompt) is not int or type(completion) is not int or prompt < 0 or completion < 0:
        return None
    ptd, ctd = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    if (ptd is not None and type(ptd) is not dict) or (ctd is not None and type(ctd) is not dict):
        return None
    cached, write = _count(ptd, "cached_tokens"), _count(ptd, "cache_write_tokens")
    reasoning = _count(ctd, "reasoning_tokens")
    if cached is None or write is None or reasoning is None:
        return None
    output = completion
    if reasoning:
        separate = reasoning_in_completion is False
        if reasoning_in_completion is None:
            total = usage.get("total_tokens")
            separate = reasoning > completion or (
                total is not None and _int(total) == prompt + completion + reasoning
            )
        if separate:
            output = completion + reasoning
    units: dict[str, Any] = {}
    if ptd:
        _modalities(ptd, "input", units)
    if ctd:
        _modalities(ctd, "output", units)
    return TokenUsage.of(prompt, cached, write, output, reasoning, units=units)


def _modalities(details: Any, direction: str, into: dict[str, Any]) -> None:
    """OpenAI `*_tokens_details` audio and image counts into `into` as `{direction}_{audio,image}_tokens`."""
    if type(details) is dict or isinstance(details, Mapping):
        audio, image = details.get("audio_tokens"), details.get("image_tokens")
        if audio:
            into[f"{direction}_audio_tokens"] = audio
        if image:
            into[f"{direction}_image_tokens"] = image


def openai_responses_usage(usage: Any) -> TokenUsage:
    """OpenAI Responses API `usage` (input includes cached; output includes reasoning)."""
    if not isinstance(usage, Mapping):
        return ZERO_USAGE
    units: dict[str, Any] = {}
    _modalities(usage.get("input_tokens_details"), "input", units)
    _modalities(usage.get("output_tokens_details"), "output", units)
    return TokenUsage.of(
        _int(usage.get("input_tokens")),
        _int(_get(usage, "input_tokens_details", "cached_tokens")),
        _int(_get(usage, "input_tokens_details", "cache_write_tokens")),
        _int(usage.get("output_tokens")),
        _int(_get(usage, "output_tokens_details", "reasoning_tokens")),
        units=units,
    )


def openai_realtime_usage(usage: Any) -> TokenUsage:
    """OpenAI Realtime `response.done` `usage`: `input_token_details` (cached, text, audio, image, and
    `cached_tokens_details` by modality) and `output_token_details` (text, audio).

    Input includes cached; audio and image parts are kept as units (`input_audio_tokens`,
    `cache_audio_read_tokens`, `output_audio_tokens`, ...) so the price book charges their rates.
    """
    if not isinstance(usage, Mapping):
        return ZERO_USAGE
    units: dict[str, Any] = {}
    _modalities(usage.get("input_token_details"), "input", units)
    _modalities(usage.get("output_token_details"), "output", units)
    cached_audio = _int(_get(usage, "input_token_details", "cached_tokens_details", "audio_tokens"))
    if cached_audio:
        units["cache_audio_read_tokens"] = cached_audio
    return TokenUsage.of(
        _int(usage.get("input_tokens")),
        _int(_get(usage, "input_token_details", "cached_tokens")),
        0,
        _int(usage.get("output_tokens")),
        0,
        units=units,
    )


def openai_embeddings_usage(usage: Any) -> TokenUsage:
    """OpenAI embeddings `usage`: `prompt_tokens` (or `total_tokens`) are all input; no output."""
    if not isinstance(usage, Mapping):
        return ZERO_USAGE
    tokens = (
        _int(usage.get("prompt_tokens")) or _int(usage.get("total_tokens")) or _int(usage.get("input_tokens"))
    )
    return TokenUsage.of(tokens)


def anthropic_usage(usage: Any) -> TokenUsage:
    """Anthropic Messages `usage`: `input_tokens` exclude cache reads and writes, so both are added.

    The cache writes' TTL split (`cache_creation.ephemeral_1h_input_tokens`), server-side web
    searches (`server_tool_use.web_search_requests`) and fast mode (`speed: fast`, recorded as the
    tier `fast`; otherwise Anthropic's own `service_tier`) are kept for pricing.
    """
    if not isinstance(usage, Mapping):
        return ZERO_USAGE
    read = _int(usage.get("cache_read_input_tokens"))
    write = _int(usage.get("cache_creation_input_tokens"))
    w1h = 0
    by_ttl = usage.get("cache_creation")
    if isinstance(by_ttl, Mapping):
        w1h = _int(by_ttl.get("ephemeral_1h_input_tokens"))
        if not write:  # newer responses may carry only the per-TTL breakdown
            write = _int(by_ttl.get("ephemeral_5m_input_tokens")) + w1h
    # thinking is already inside output_tokens; a separate count is reported only by some versions
    details = usage.get("output_tokens_details")
    thinking = _int(details.get("thinking_tokens")) if isinstance(details, Mapping) else 0
    tools = usage.get("server_tool_use")
    searches = tools.get("web_search_requests") if isinstance(tools, Mapping) else None
    return TokenUsage.of(
        _int(usage.get("input_tokens")) + read + write,
        read,
        write,
        _int(usage.get("output_tokens")),
        thinking,
        w1h,
        {"web_searches": searches} if searches else None,
        "fast" if usage.get("speed") == "fast" else usage.get("service_tier"),
    )


#: Gemini modality names -> our unit keys (genai-prices counts DOCUMENT tokens as image tokens)
_GEMINI_MODALITY = {"AUDIO": "audio", "IMAGE": "image", "DOCUMENT": "image", "VIDEO": "video"}


def _gemini_modalities(details: Any, template: str, into: dict[str, int]) -> None:
    """Add a Gemini `*TokensDetails` list ([{modality, tokenCount}]) into `into` by unit key."""
    if not isinstance(details, list):
        return
    for item in details:
        if isinstance(item, Mapping):
            kind = _GEMINI_MODALITY.get(str(item.get("modality", "")).upper())
            if kind is not None:
                key = template.format(kind)
                into[key] = into.get(key, 0) + _int(item.get("tokenCount"))


def gemini_usage(usage_metadata: Any) -> TokenUsage:
    """Gemini `usageMetadata`: prompt includes cached content; thoughts are added to candidates.

    Non-text modality counts (`promptTokensDetails`, `toolUsePromptTokensDetails`,
    `candidatesTokensDetails`, `cacheTokensDetails`) are kept as units: audio, image and video are
    priced apart from text by some models.
    """
    if not isinstance(usage_metadata, Mapping):
        return ZERO_USAGE
    m = usage_metadata
    thoughts = _int(m.get("thoughtsTokenCount"))
    units: dict[str, int] = {}
    _gemini_modalities(m.get("promptTokensDetails"), "input_{}_tokens", units)
    _gemini_modalities(m.get("toolUsePromptTokensDetails"), "input_{}_tokens", units)
    _gemini_modalities(m.get("candidatesTokensDetails"), "output_{}_tokens", units)
    _gemini_modalities(m.get("cacheTokensDetails"), "cache_{}_read_tokens", units)
    return TokenUsage.of(
        _int(m.get("promptTokenCount")) + _int(m.get("toolUsePromptTokenCount")),
        _int(m.get("cachedContentTokenCount")),
        0,
        _int(m.get("candidatesTokenCount")) + thoughts,
        thoughts,
        units=units,
    )
