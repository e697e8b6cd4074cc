"""The one reading of a proxied request's path: what is matched is exactly what is forwarded.

A client's path reaches the proxy percent-encoded (ASGI `raw_path`). Decoding it before matching
and forwarding the raw form would let the two disagree: `/v1/chat/completions%3F` is not the chat
endpoint to a matcher that sees `.../completions?`, yet an upstream that decodes it serves chat,
unmetered. So the path is split on its literal slashes, each segment decoded once, and a segment
that another server could read differently is refused: an encoded `/`, `\\`, `?` or `#`, a `;`
(a path parameter, which some servers strip), a dot segment (`.`, `..`, `%2e%2e`), a `%XX` left
after decoding (`%252e`: encoded twice), leading or trailing white space (`completions%20`), a
control character, bytes that are not UTF-8, and characters whose compatibility form is one of
these (a full-width `／` or `．．`). Empty segments inside the path (`/v1//chat`) are dropped,
as most servers merge them; trailing ones are kept. What is left is matched on the decoded
segments and forwarded re-encoded from them, the same segments, so nothing can climb out of a
backend's `base_url` path or split into another endpoint on the way.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_to_bytes

#: characters a path segment may carry unencoded (RFC 3986 `pchar` minus `%` and `;`)
_SAFE = "-._~!$&'()*+,=:@"
#: a path made of these characters only needs no decoding (and no encoding) at all
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
_FORBIDDEN = {
    "/": "an encoded '/'",
    "\\": "a '\\'",
    "?": "an encoded '?'",
    "#": "an encoded '#'",
    ";": "a ';' (a path parameter, which some servers drop)",
}
_TWICE = re.compile(r"%[0-9A-Fa-f]{2}")
_DOTS = "the path has a dot segment ('.' or '..'); send the resolved path"


class PathRefused(ValueError):
    """The request path cannot be read one way only; answered with a 400 in the protocol's shape."""


@dataclass(frozen=True, slots=True)
class ProxyPath:
    """A request path read once: the backend prefix, and the rest decoded (to match) and encoded (to send)."""

    backend: str
    #: the path after the prefix, decoded, with its leading slash (what the meters match)
    rest: str
    #: the same segments re-encoded (what goes upstream after the backend's base_url)
    forward: str


def _check(text: str) -> None:
    for ch, what in _FORBIDDEN.items():
        if ch in text:
            raise PathRefused(f"the path has {what} inside a segment; send the path without it")
    if text in (".", ".."):
        raise PathRefused(_DOTS)


def _segment(raw: str) -> str:
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise PathRefused("the path is not UTF-8 once percent-decoded") from None
    _check(text)
    if "%" in text and _TWICE.search(text):
        raise PathRefused("the path is percent-encoded twice ('%25' before hex digits); encode it once")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        raise PathRefused("the path has a control character")
    if text != text.strip():
        raise PathRefused("a path segment starts or ends with white space")
    if not text.isascii():
        folded = unicodedata.normalize("NFKC", text)
        if folded != text:
            try:  # a full-width '／' or '．．' is a '/' or '..' to a server that folds compatibility forms
                _check(folded)
            except PathRefused as e:
                raise PathRefused(f"{e} (written with look-alike characters)") from None
    return text


def _merged(segments: list[str]) -> list[str]:
    """Drop empty segments before a non-empty one (`a//b` is `a/b`); keep trailing ones (`b/`, `b//`)."""
    last = len(segments)
    while last > 0 and segments[last - 1] == "":
        last -= 1
    return [s for s in segments[:last] if s] + segments[last:]


def read_path(raw_path: bytes | str) -> ProxyPath:
    """Split `/{backend}/{rest}` from the raw (percent-encoded) path; PathRefused when ambiguous."""
    raw = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else raw_path
    if not raw.startswith("/"):
        raise PathRefused("the path must start with '/'")
    if _PLAIN.fullmatch(raw) and "//" not in raw:  # nothing encoded (what SDKs send)
        if "." in raw:
            for segment in raw.split("/"):
                if segment in (".", ".."):
                    raise PathRefused(_DOTS)
        name, _, tail = raw[1:].partition("/")
        return ProxyPath(backend=name, rest="/" + tail, forward="/" + tail)
    segments = [_segment(s) for s in raw[1:].split("/")]
    rest = _merged(segments[1:])
    return ProxyPath(
        backend=segments[0],
        rest="/" + "/".join(rest),
        forward="/" + "/".join(quote(s, safe=_SAFE) for s in rest),
    )


def encode(path: str) -> str:
    """A decoded path as `read_path` checked it (no `/` inside a segment), percent-encoded to send."""
    return path if _PLAIN.fullmatch(path) else quote(path, safe=_SAFE + "/")


# ---------------------------------------------------------------- the attribution prefix
#: the first segment of a path carrying attribution: `/_llmb/session=S/agent=A/{backend}/{rest}`
#: (a backend name starts with a letter or digit and has no `=`, so neither part can be a backend)
PREFIX = "_llmb"
_PREFIX_RAW = "/" + PREFIX + "/"
#: the attribution fields a prefix may carry, each at most once, in any order
PREFIX_FIELDS = ("session", "agent")
#: the longest value, in characters once decoded: as an `X-LLMBudget-*` header (proxy.MAX_ATTRIBUTION_CHARS)
MAX_VALUE_CHARS = 256
#: the longest encoded `name=value` segment read at all (every character a 4-byte `%XX` sequence)
_MAX_PAIR_RAW = len("session=") + MAX_VALUE_CHARS * 12


@dataclass(frozen=True, slots=True)
class PrefixedPath:
    """A path read past its attribution prefix: the fields it set and the path the proxy serves."""

    #: field (`session`, `agent`) -> value, decoded once
    attribution: dict[str, str]
    #: what follows the prefix, `/{backend}/...` exactly as the client encoded it (ASGI `raw_path`)
    raw_path: bytes
    #: the same, percent-decoded as the server decodes a request's path (ASGI `path`)
    path: str

    @property
    def backend(self) -> str:
        """The first segment after the prefix, decoded: the backend, when one has that name."""
        return self.path[1:].partition("/")[0]


def read_prefix(raw_path: bytes | str) -> PrefixedPath:
    """Read `/_llmb/name=value/.../{backend}/{rest}`; PathRefused when the prefix is malformed.

    Each `name=value` segment is split on its first literal `=`, and the value decoded once and
    checked by the same rules as a proxied path's segments (`_segment`: no encoded `/`, `\\`,
    `?`, `#`, no `;`, no dot segment, nothing encoded twice, no white space at either end, no
    control character or look-alike, UTF-8); it is not empty and at most `MAX_VALUE_CHARS`
    characters, as an attribution header. The rest is left as sent: `read_path` reads it as any path.
    """
    raw = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else raw_path
    if not raw.startswith(_PREFIX_RAW):
        raise PathRefused(f"the path does not start with /{PREFIX}/")
    attribution: dict[str, str] = {}
    at = len(_PREFIX_RAW) - 1  # the slash before the next segment
    while True:
        end = raw.find("/", at + 1)
        segment = raw[at + 1 : end if end >= 0 else len(raw)]
        if "=" not in segment:
            break
        if len(segment) > _MAX_PAIR_RAW:
            raise PathRefused(f"/{PREFIX}/: a value is longer than {MAX_VALUE_CHARS} characters")
        name, _, value = segment.partition("=")
        if name not in PREFIX_FIELDS:
            raise PathRefused(
                f"/{PREFIX}/: unknown field {name[:40]!r}; the prefix takes "
                + " and ".join(f"{f}=VALUE" for f in PREFIX_FIELDS)
            )
        if name in attribution:
            raise PathRefused(f"/{PREFIX}/: {name} is given twice")
        try:
            text = _segment(value)
        except PathRefused as e:
            raise PathRefused(f"/{PREFIX}/: {name}: {e}") from None
        if not text:
            raise PathRefused(f"/{PREFIX}/: {name} is empty")
        if len(text) > MAX_VALUE_CHARS:
            raise PathRefused(f"/{PREFIX}/: {name} is longer than {MAX_VALUE_CHARS} characters")
        attribution[name] = text
        if end < 0:
            break
        at = end
    if not attribution:
        raise PathRefused(f"/{PREFIX}/ is followed by no field: /{PREFIX}/session=S/agent=A/{{backend}}/...")
    rest = raw[at:]
    if "=" in segment or not segment:
        raise PathRefused(
            f"/{PREFIX}/: no backend after the attribution: /{PREFIX}/session=S/{{backend}}/..."
        )
    # decoded as the server decoded the whole path; the proxy refuses what `read_path` cannot read
    return PrefixedPath(attribution=attribution, raw_path=rest.encode("latin-1"), path=unquote(rest))


def prefix_path(*, session: str | None = None, agent: str | None = None) -> str:
    """The attribution prefix for these values, `/_llmb/session=S/agent=A` (encoded as `read_prefix` reads it).

    ValueError when a value cannot travel in a path (see `prefix_refusal`).
    """
    parts = []
    for name, value in (("session", session), ("agent", agent)):
        if value is None:
            continue
        why = prefix_refusal(value)
        if why is not None:
            raise ValueError(f"{name} {value!r} {why}")
        parts.append(f"{name}={quote(value.strip(), safe=_SAFE)}")
    if not parts:
        raise ValueError("an attribution prefix needs a session or an agent")
    return "/" + PREFIX + "/" + "/".join(parts)


def prefix_refusal(value: str) -> str | None:
    """Why `value` (trimmed) cannot go in an attribution prefix (`read_prefix` would refuse it), or None."""
    text = value.strip()
    if not text:
        return "is empty"
    if len(text) > MAX_VALUE_CHARS:
        return f"is longer than {MAX_VALUE_CHARS} characters"
    for ch in _FORBIDDEN:
        if ch in text:
            return f"has a {ch!r}, which cannot go in a URL path segment"
    try:  # whatever else `read_prefix` refuses: a dot segment, a control character, a look-alike, ...
        _segment(quote(text, safe=_SAFE))
    except PathRefused as e:
        return f"cannot go in a URL path segment ({str(e).removeprefix('the path ')})"
    return None
