"""Virtual keys in the ledger's database (table `virtual_keys`, migration 0009): hashes only, never secrets."""

from __future__ import annotations

import time
from typing import Any

from ..errors import LLMBudgetError, NotFound, ValidationError
from ..keys import VirtualKey

_COLS = "name, key_hash, hint, agent, team, user_name, backends, created_us, expires_us, revoked_us"


def _row_to_key(r: Any) -> VirtualKey:
    return VirtualKey(
        name=r[0],
        key_hash=r[1],
        hint=r[2],
        agent=r[3],
        team=r[4],
        user=r[5],
        backends=tuple(b for b in r[6].split(",") if b) if r[6] else None,
        created_us=int(r[7]),
        expires_us=None if r[8] is None else int(r[8]),
        revoked_us=None if r[9] is None else int(r[9]),
    )


class KeyStore:
    """Create, find, list and revoke virtual keys in a SQLite or PostgreSQL ledger."""

    def __init__(self, ledger: Any) -> None:
        if not hasattr(ledger, "_tx"):
            raise LLMBudgetError("virtual keys need a SQLite or PostgreSQL ledger")
        self.ledger = ledger

    def add(self, key: VirtualKey) -> None:
        """Store a new key; a revoked or expired key of the same name is replaced, an active one is an error."""
        now_us = time.time_ns() // 1000
        with self.ledger._tx() as db:
            rows = db.execute(f"SELECT {_COLS} FROM virtual_keys WHERE name = ?", (key.name,))
            if rows:
                old = _row_to_key(rows[0])
                if old.state(now_us) == "active":
                    raise ValidationError(
                        "NAME",
                        f"a key named {key.name!r} exists and is active; revoke it first or pick another name",
                    )
                db.execute("DELETE FROM virtual_keys WHERE name = ?", (key.name,))
            db.execute(
                f"INSERT INTO virtual_keys ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.name,
                    key.key_hash,
                    key.hint,
                    key.agent,
                    key.team,
                    key.user,
                    ",".join(key.backends) if key.backends is not None else None,
                    key.created_us,
                    key.expires_us,
                    key.revoked_us,
                ),
            )

    def by_hash(self, key_hash: str) -> VirtualKey | None:
        """The key whose secret hashes to `key_hash` (any state), or None."""
        with self.ledger._read() as db:
            rows = db.execute(f"SELECT {_COLS} FROM virtual_keys WHERE key_hash = ?", (key_hash,))
        return _row_to_key(rows[0]) if rows else None

    def list(self) -> list[VirtualKey]:
        """Every key, by name."""
        with self.ledger._read() as db:
            rows = db.execute(f"SELECT {_COLS} FROM virtual_keys ORDER BY name")
        return [_row_to_key(r) for r in rows]

    def revoke(self, name: str) -> tuple[VirtualKey, bool]:
        """Revoke the key named `name`; (key, changed). An unknown name is NotFound, naming the known ones."""
        now_us = time.time_ns() // 1000
        with self.ledger._tx() as db:
            rows = db.execute(f"SELECT {_COLS} FROM virtual_keys WHERE name = ?", (name,))
            if not rows:
                names = [r[0] for r in db.execute("SELECT name FROM virtual_keys ORDER BY name")]
                known = ", ".join(names[:20]) or "(none)"
                raise NotFound(f"no key named {name!r}; keys: {known}")
            key = _row_to_key(rows[0])
            if key.revoked_us is not None:
                return key, False
            db.execute("UPDATE virtual_keys SET revoked_us = ? WHERE name = ?", (now_us, name))
        return key.revoked(now_us), True
