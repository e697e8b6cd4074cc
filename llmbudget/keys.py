"""Virtual keys: `llmb-...` secrets that stand for a fixed attribution and earn a backend's provider key.

A key is 32 random bytes (`llmb-` + URL-safe base64); only its SHA-256 is stored (a fast hash
is enough for random secrets of that size: there is nothing to guess from). The proxy resolves
a presented key through `KeyRing`, an in-memory cache whose entries are re-read from the
database after at most `KeyRing.ttl_s` (1 s), so `llmbudget keys revoke` takes effect within a
second on every replica sharing the database, and a busy key costs one indexed read a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .errors import ValidationError

PREFIX = "llmb-"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def new_secret() -> str:
    """A fresh `llmb-...` secret (256 random bits)."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The stored form of a secret: its SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def check_name(name: str) -> str:
    """A key name: letters, digits and `_ . : @ -`, at most 64 characters."""
    if not _NAME.fullmatch(name):
        raise ValidationError(
            "NAME", f"{name!r} is not a key name: use letters, digits and _ . : @ - (at most 64)"
        )
    return name


def parse_expires(value: str, now: datetime | None = None) -> datetime:
    """`--expires`: a duration (`30d`, `12h`, `2w`, `90m`) from now, or a date/time (`2027-01-31`)."""
    now = now or datetime.now(UTC)
    text = value.strip().lower()
    m = _DURATION.fullmatch(text)
    if m:
        seconds = int(m.group(1)) * _UNIT_S[m.group(2)]
        if seconds <= 0 or seconds > 100 * 366 * 86400:
            raise ValidationError("--expires", f"must be between 1s and 100 years, got {value!r}")
        return datetime.fromtimestamp(now.timestamp() + seconds, UTC)
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(
            "--expires", f"cannot read {value!r}; use a duration such as 30d, 12h, 2w or a date 2027-01-31"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= now:
        raise ValidationError("--expires", f"{value!r} is in the past")
    return when.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A stored virtual key (never its secret)."""

    name: str
    key_hash: str
    #: the first characters of the secret, to recognise it (`llmb-AbCd...`)
    hint: str
    agent: str | None = None
    team: str | None = None
    user: str | None = None
    #: backends the key may use; None: every backend
    backends: tuple[str, ...] | None = None
    created_us: int = 0
    expires_us: int | None = None
    revoked_us: int | None = None

    def state(self, now_us: int | None = None) -> str:
        """`active`, `expired` or `revoked`."""
        if self.revoked_us is not None:
            return "revoked"
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        if self.expires_us is not None and now_us >= self.expires_us:
            return "expired"
        return "active"

    def revoked(self, at_us: int) -> VirtualKey:
        return replace(self, revoked_us=at_us)

    def allows(self, backend: str) -> bool:
        return self.backends is None or backend in self.backends

    def fixed(self) -> dict[str, str]:
        """The attribution this key fixes (headers cannot override it)."""
        out = {}
        for name in ("agent", "team", "user"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the hash (nothing about the secret but its hint)."""

        def ts(us: int | None) -> str | None:
            if us is None:
                return None
            return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

        return {
            "name": self.name,
            "hint": self.hint,
            "state": self.state(),
            "agent": self.agent,
            "team": self.team,
            "user": self.user,
            "backends": list(self.backends) if self.backends is not None else None,
            "created": ts(self.created_us),
            "expires": ts(self.expires_us),
            "revoked": ts(self.revoked_us),
        }


def make_key(
    name: str,
    *,
    agent: str | None = None,
    team: str | None = None,
    user: str | None = None,
    backends: tuple[str, ...] | None = None,
    expires: datetime | None = None,
) -> tuple[VirtualKey, str]:
    """A new key and its secret (shown once, never stored)."""
    secret = new_secret()
    key = VirtualKey(
        name=check_name(name),
        key_hash=hash_secret(secret),
        hint=secret[: len(PREFIX) + 4] + "...",
        agent=agent or None,
        team=team or None,
        user=user or None,
        backends=backends,
        created_us=time.time_ns() // 1000,
        expires_us=None if expires is None else int(expires.timestamp() * 1_000_000),
    )
    return key, secret


class KeyRing:
    """The proxy's view of the virtual keys: hash + in-memory cache, re-read at most `ttl_s` later."""

    def __init__(self, store: Any, ttl_s: float = 1.0, max_entries: int = 10_000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, VirtualKey | None]] = {}

    async def resolve(self, secret: str) -> VirtualKey | None:
        """The key a presented secret stands for (any state), None when unknown; unknown secrets are cached too."""
        h = hash_secret(secret)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        # the entry's age counts from before the read: a revocation committed during it is seen next time
        key: VirtualKey | None = await asyncio.to_thread(self.store.by_hash, h)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[h] = (now, key)
        return key
