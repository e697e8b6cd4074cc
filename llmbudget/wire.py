"""The wire protocols llmbudget speaks (`openai`, `anthropic`, `gemini`): one `WireProtocol` object each.

What differs between the protocols, outside of reading usage, is written here once: the JSON error
shape and the error that ends a broken stream, where a client's key travels and how the operator's
key goes on an upstream request, the rate-limit headers its upstreams send, whether its error
bodies carry quota information, the call id a response header gives, its default price-book
provider, the usage fields of its answers and the environment variables its clients read for a
base URL. The proxy, `wrap()`, the translator, the WebSocket relay, `llmbudget run`, the access
guard, the price book and the quota readings ask these objects; none of them branches on a
protocol's name. The capture layer adds each protocol's meters (`llmbudget/capture/protocols.py`).

A backend's `kind` names its protocol: `PROTOCOLS[kind]`, looked up once when a backend is set up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .events import anthropic_call_id

#: an error body: (HTTP status, message, machine-readable code) -> the protocol's JSON error object
ErrorShape = Callable[[int, str, str], dict[str, Any]]

#: headers of cost-reporting gateways (LiteLLM, llmbudget itself), read whatever the protocol
GATEWAY_RATE_PREFIXES = (b"x-litellm-", b"x-llmbudget-cost-usd", b"x-request-cost", b"x-cost-usd")


def _openai_error(status: int, message: str, code: str) -> dict[str, Any]:
    """OpenAI's error shape, so the SDK raises its normal exception."""
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_exceeded",
        502: "api_connection_error",
    }.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    502: "api_error",
    529: "overloaded_error",
}


def _anthropic_error(status: int, message: str, code: str) -> dict[str, Any]:
    """Anthropic's error shape."""
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


_GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    # request headers too large: Google's status for a request it will not read
    431: "INVALID_ARGUMENT",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}


def _gemini_error(status: int, message: str, code: str) -> dict[str, Any]:
    """Google's error shape."""
    return {"error": {"code": status, "message": message, "status": _GOOGLE_STATUSES.get(status, "INTERNAL")}}


@dataclass(frozen=True, slots=True, kw_only=True)
class WireProtocol:
    """One wire protocol: everything about it that is not reading usage from its answers."""

    #: the backend `kind` that names it
    name: str
    #: the price-book provider of a backend speaking it when neither the backend nor its host says
    provider: str
    #: True when the protocol itself names the provider (only Anthropic serves the Anthropic API);
    #: False when many providers' models come over it (OpenAI-compatible servers): guessed from the model
    names_provider: bool
    #: the protocol's JSON error body, so the official SDKs raise their normal exceptions
    error_body: ErrorShape
    #: what goes before `data:` in the SSE event that ends a broken stream (Anthropic names it `error`)
    sse_error_prefix: bytes = b""
    #: request headers (lower case) a client's key travels in
    key_headers: tuple[bytes, ...]
    #: the query parameter a client's key may travel in (Gemini's `?key=`), None when it never does
    key_query: str | None = None
    #: the header the operator's key goes in on an upstream request, and what comes before the key
    upstream_key_header: str
    upstream_key_scheme: str = ""
    #: response header prefixes (lower case) its upstreams report rate limits and retries in
    rate_limit_prefixes: tuple[bytes, ...] = ()
    #: its error bodies carry quota information (Google's QuotaFailure / RetryInfo), its answers no
    #: rate-limit headers: an error is kept with its body, a success after an error reads "allowed"
    quota_in_error_body: bool = False
    #: the response header whose value becomes the call's event id, and how (Anthropic's `request-id`,
    #: which Claude Code's logs name too, so an import never counts a proxied call twice)
    call_id_header: str | None = None
    call_id: Callable[[str | None], str | None] | None = None
    #: the input and output token fields of its answers' usage object
    usage_fields: tuple[str, str]
    #: the environment variable its clients (SDKs, agent CLIs) read for a base URL, and the path
    #: after `/{backend}` that URL ends in
    base_url_env: str
    base_url_suffix: str = ""

    def error_bytes(self, status: int, message: str, code: str = "llmbudget_error") -> bytes:
        """The error body as the JSON bytes an answer carries."""
        return json.dumps(self.error_body(status, message, code)).encode()

    def stream_error(
        self, ctype: bytes, message: str, *, started: bool | None = None, code: str = "upstream_cut"
    ) -> bytes | None:
        """The protocol's error where a stream breaks: an SSE error event, or (Gemini's JSON-array
        stream, when `started` says whether its `[` went out) an error object closing the array.
        None when the stream is neither."""
        payload = self.error_bytes(502, message, code)
        if ctype.startswith(b"text/event-stream"):
            # leading blank line ends any partial event the client already holds
            return b"\n\n" + self.sse_error_prefix + b"data: " + payload + b"\n\n"
        if started is None:
            return None
        return (b",\n" if started else b"[") + payload + b"]\n"

    def usage_counts(self, usage: Mapping[str, Any]) -> tuple[int, int]:
        """(input, output) tokens of an answer's usage object in this protocol's field names."""
        i, o = self.usage_fields
        return int(usage.get(i) or 0), int(usage.get(o) or 0)

    def usage_object(self, input_tokens: int, output_tokens: int) -> dict[str, int]:
        """A usage object in this protocol's field names."""
        i, o = self.usage_fields
        return {i: input_tokens, o: output_tokens}


_RETRY = (b"retry-after",)

OPENAI = WireProtocol(
    name="openai",
    provider="openai",
    names_provider=False,
    error_body=_openai_error,
    key_headers=(b"authorization",),
    upstream_key_header="Authorization",
    upstream_key_scheme="Bearer ",
    rate_limit_prefixes=(b"x-ratelimit-", *_RETRY),
    usage_fields=("prompt_tokens", "completion_tokens"),
    base_url_env="OPENAI_BASE_URL",
    base_url_suffix="/v1",
)
ANTHROPIC = WireProtocol(
    name="anthropic",
    provider="anthropic",
    names_provider=True,
    error_body=_anthropic_error,
    sse_error_prefix=b"event: error\n",
    key_headers=(b"x-api-key", b"authorization"),
    upstream_key_header="x-api-key",
    rate_limit_prefixes=(b"anthropic-ratelimit-", *_RETRY),
    call_id_header="request-id",
    call_id=anthropic_call_id,
    usage_fields=("input_tokens", "output_tokens"),
    base_url_env="ANTHROPIC_BASE_URL",
)
GEMINI = WireProtocol(
    name="gemini",
    provider="google",
    names_provider=True,
    error_body=_gemini_error,
    key_headers=(b"x-goog-api-key",),
    key_query="key",
    upstream_key_header="x-goog-api-key",
    quota_in_error_body=True,
    usage_fields=("promptTokenCount", "candidatesTokenCount"),
    # Gemini CLI (packages/core/src/core/contentGenerator.ts) and the google-genai SDK's gateway form
    base_url_env="GOOGLE_GEMINI_BASE_URL",
)

#: every protocol by the backend `kind` that names it
PROTOCOLS: dict[str, WireProtocol] = {p.name: p for p in (OPENAI, ANTHROPIC, GEMINI)}

#: every header a client's key may travel in, whichever protocol (a client may send any backend's)
KEY_HEADERS = frozenset(h for p in PROTOCOLS.values() for h in p.key_headers)
#: every response header prefix that carries a quota signal, whichever protocol
RATE_PREFIXES = tuple(dict.fromkeys(h for p in PROTOCOLS.values() for h in p.rate_limit_prefixes)) + (
    GATEWAY_RATE_PREFIXES
)


def protocol_for(kind: str | None) -> WireProtocol:
    """The protocol a backend `kind` names; OpenAI's (the common one) for anything else."""
    return PROTOCOLS.get(kind or "", OPENAI)


def guess_protocol(path: str) -> WireProtocol:
    """The protocol a path most likely speaks (for errors on requests that matched no backend)."""
    if ":generateContent" in path or ":streamGenerateContent" in path or "/v1beta/" in path:
        return GEMINI
    if path.rstrip("/").endswith(("/messages", "/messages/count_tokens")):
        return ANTHROPIC
    return OPENAI
