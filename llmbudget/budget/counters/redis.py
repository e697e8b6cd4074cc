"""Budget counters in Redis hashes: each step is one Lua script, atomic across replicas."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from ...errors import StorageError
from ..seed import LedgerSeeder, SeedSpec
from .base import (
    Charge,
    CounterStore,
    LeaseResult,
    Reconciled,
    Refusal,
    Spend,
    _checked,
    _count_calls,
    _guard_all,
    _items,
    _lease_keys,
    _merge,
    _pending_rows,
    _refusal_at,
)

log = logging.getLogger("llmbudget.budget")


def _spends_arg(spends: Sequence[Spend]) -> str:
    """The lease script's spends: summed per counter, and per event and counter for the pending hash
    (a few commands per counter and one per event, not six per settlement)."""
    per_key = _merge([(sp.key, sp.amount) for sp in spends])
    pending = [[k, e, a, kept] for (e, k), (a, kept) in _pending_rows(spends).items()]
    return json.dumps([[[k, a] for k, a in per_key.items()], pending])


def _lua(*names: str) -> str:
    """A script made of the package's Lua files (`lua/*.lua`), in order."""
    return "".join((_LUA_DIR / f"{name}.lua").read_text(encoding="utf-8") for name in names)


_LUA_DIR = resources.files("llmbudget.budget.counters") / "lua"
_LUA_SWEEP = _lua("sweep") + "return 1\n"
_LUA_ENSURE = _lua("prelude", "seed") + "return 1\n"
_LUA_RESERVE = _lua("sweep", "seed", "reserve")
_LUA_SETTLE = _lua("settle")
_LUA_LEASE = _lua("sweep", "seed", "lease")
_LUA_INFLIGHT = _lua("inflight")
_LUA_RELEASE_OWNER = _lua("release_owner")
_LUA_RECONCILE = _lua("reconcile")


@_guard_all
class RedisCounters(CounterStore):
    """Counters in Redis hashes; check-and-book is one Lua script, so it is atomic across replicas."""

    def __init__(self, url: str, *, prefix: str = "llmb:budget:", seeder: LedgerSeeder | None = None) -> None:
        try:
            import redis
        except ImportError as e:  # pragma: no cover - extra not installed
            raise StorageError("Redis budgets need `pip install 'llmbudget[redis]'`") from e
        self.url = url
        self.prefix = prefix
        self._driver_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._r = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5, max_connections=64, health_check_interval=30
        )
        self._reserve = self._r.register_script(_LUA_RESERVE)
        self._settle = self._r.register_script(_LUA_SETTLE)
        self._sweep = self._r.register_script(_LUA_SWEEP)
        self._ensure = self._r.register_script(_LUA_ENSURE)
        self._reconcile = self._r.register_script(_LUA_RECONCILE)
        self._release_owner_script = self._r.register_script(_LUA_RELEASE_OWNER)
        self._lease_script = self._r.register_script(_LUA_LEASE)
        self._inflight_script = self._r.register_script(_LUA_INFLIGHT)
        self._init_owner()
        #: reads seeds from the ledger's database (None: counters start at 0)
        self.seeder = seeder
        self._known: set[str] = set()
        self._known_lock = threading.Lock()
        try:
            self.reap()  # a predecessor killed on this storage leaves nothing reserved
        except self._driver_errors as e:  # Redis not up yet: the first reservation says so clearly
            log.warning("budget reap_failed error=%s", type(e).__name__)

    def _beat(self, now: float) -> None:
        self._r.hset(self.prefix + "owners", self.owner, json.dumps([self.host, self.pid, self.started, now]))

    def _owners(self) -> list[tuple[str, str, int, str, float]]:
        out = []
        for k, v in self._r.hgetall(self.prefix + "owners").items():
            host, pid, started, beat = json.loads(v)
            out.append(
                (
                    k.decode() if isinstance(k, bytes) else str(k),
                    str(host),
                    int(pid),
                    str(started),
                    float(beat),
                )
            )
        return out

    def _release_owner(self, owner: str) -> int:
        return int(self._release_owner_script(args=[self.prefix, owner]))

    def _seed_args(self, seeds: Mapping[str, SeedSpec] | None) -> tuple[str, list[str]]:
        if not seeds:
            return "[]", []
        with self._known_lock:
            fresh = [k for k in sorted(seeds) if k not in self._known]
        if not fresh:
            return "[]", []
        amounts = (
            self.seeder.amounts({k: seeds[k] for k in fresh}) if self.seeder else dict.fromkeys(fresh, 0)
        )
        return json.dumps([[k, amounts[k]] for k in fresh]), fresh

    def _remember(self, keys: list[str]) -> None:
        if keys:
            with self._known_lock:
                if len(self._known) > 100_000:
                    self._known.clear()
                self._known.update(keys)

    def ensure(self, seeds: Mapping[str, SeedSpec]) -> None:
        arg, fresh = self._seed_args(seeds)
        if fresh:
            self._ensure(args=[self.prefix, "", 0, "", "", 0, arg])
            self._remember(fresh)

    def ledger_values(self, column: str, start_us: int, end_us: int) -> list[str]:
        return self.seeder.values(column, start_us, end_us) if self.seeder else []

    def reserve(
        self, rid: str, charges: Sequence[Charge], ttl_s: float, seeds: Mapping[str, SeedSpec] | None = None
    ) -> Refusal | None:
        spec = [
            {"r": list(c.read_keys), "l": -1 if c.limit is None else c.limit, "a": c.amount} for c in charges
        ]
        self._hold_lease()
        seed_arg, fresh = self._seed_args(seeds)
        res = self._reserve(
            args=[
                self.prefix,
                rid,
                time.time(),
                json.dumps(spec),
                json.dumps(_items(charges)),
                ttl_s,
                seed_arg,
            ]
        )
        self._remember(fresh)
        return _refusal_at(charges, res)

    def settle(
        self,
        rid: str,
        actual: Sequence[tuple[str, int]],
        event_id: str | None = None,
        ledgered: Sequence[tuple[str, int]] | None = None,
    ) -> bool:
        merged = _merge(actual)
        shown = dict(ledgered) if ledgered is not None else merged
        pending = [
            [k, min(a, int(shown.get(k, a))), a - min(a, int(shown.get(k, a)))] for k, a in merged.items()
        ]
        self._settle(
            args=[
                self.prefix,
                rid,
                json.dumps([[k, int(v)] for k, v in actual]),
                event_id or "",
                json.dumps(pending),
            ]
        )
        if event_id is None or self.seeder is None:
            return False
        try:
            return event_id in self.seeder.ledgered([event_id])
        except (
            Exception
        ) as e:  # the ledger unreachable: the pending entry holds; the next reconcile settles it
            log.warning("budget ledger_check_failed error=%s", type(e).__name__)
            return False

    def reconcile(self, seeds: Mapping[str, SeedSpec]) -> dict[str, Reconciled]:
        keys = sorted(seeds)
        if not keys:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.hkeys(self.prefix + "p:" + k)
        ids = sorted({(i.decode() if isinstance(i, bytes) else i) for got in pipe.execute() for i in got})
        # the ledger first, then one script: a settlement landing in between can only count twice
        # (never be missed), and its own settle() reconciles again when the ledger holds its event
        seen = self.seeder.ledgered(ids) if self.seeder else {}
        amounts = self.seeder.amounts({k: seeds[k] for k in keys}) if self.seeder else dict.fromkeys(keys, 0)
        arg = [[k, amounts[k], {i: int(seen[i]) for i in ids if i in seen}] for k in keys]
        res = self._reconcile(args=[self.prefix, json.dumps(arg)])
        out: dict[str, Reconciled] = {}
        for k, (before, after, un, kept) in zip(keys, res, strict=True):
            b, a = int(before), int(after)
            out[k] = Reconciled(a if b < 0 else b, a, amounts[k], int(un), int(kept))
        self._remember(keys)
        return out

    def check(self, seeds: Mapping[str, SeedSpec]) -> dict[str, Reconciled]:
        keys = sorted(seeds)
        if not keys:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(self.prefix + "p:" + k)
            pipe.hget(self.prefix + "c:" + k, "s")
        got = pipe.execute()
        pending = [{_text(i): _text(v) for i, v in rows.items()} for rows in got[0::2]]
        ids = sorted({i for rows in pending for i in rows})
        # pending first, then the ledger: a settlement whose event lands in between counts once
        seen = self.seeder.ledgered(ids) if self.seeder else {}
        amounts = self.seeder.amounts({k: seeds[k] for k in keys}) if self.seeder else dict.fromkeys(keys, 0)
        out: dict[str, Reconciled] = {}
        for k, rows, s in zip(keys, pending, got[1::2], strict=True):
            un = kept = 0
            for i, v in rows.items():  # "amount:kept", counted as the reconcile script counts them
                a, _, kk = v.partition(":")
                priced = seen.get(i)
                if priced is None:  # not in the ledger yet
                    un += int(a)
                    kept += int(kk)
                elif not priced:  # in the ledger unpriced: its worst case is kept
                    kept += int(kk)
            out[k] = _checked(amounts[k], un, kept, None if s is None else int(_text(s)))
        return out

    def release(self, rid: str) -> None:
        self._settle(args=[self.prefix, rid, "[]"])

    def lease(
        self,
        rid: str,
        spends: Sequence[Spend] = (),
        grow: Sequence[Charge] = (),
        give_back: Mapping[str, int] | None = None,
        calls: Mapping[str, int] | None = None,
        ttl_s: float = 3600,
        seeds: Mapping[str, SeedSpec] | None = None,
    ) -> LeaseResult:
        self._hold_lease()
        seed_arg, fresh = self._seed_args(seeds)
        keys = _lease_keys(spends, grow, give_back)
        spec = [
            {"r": list(c.read_keys), "l": -1 if c.limit is None else c.limit, "a": c.amount} for c in grow
        ]
        res = self._lease_script(
            args=[
                self.prefix,
                rid,
                time.time(),
                json.dumps(spec),
                json.dumps(_items(grow)),
                ttl_s,
                seed_arg,
                _spends_arg(spends),
                json.dumps(dict(give_back or {})) if give_back else "{}",
                json.dumps(dict(calls or {})) if calls else "{}",
                json.dumps(keys),
            ]
        )
        self._remember(fresh)
        (idx, spent, reserved), held_rows, total_rows = res
        refusal = None
        if int(idx):
            c = grow[int(idx) - 1]
            refusal = Refusal(c.budget, int(spent), int(reserved), int(c.limit or 0), c.amount)
        held = {_text(k): int(v) for k, v in held_rows}
        totals = {_text(k): (int(s or 0), int(r or 0)) for k, s, r in total_rows if s or r}
        ledgered = False
        ids = sorted({sp.event_id for sp in spends if sp.event_id})
        if ids and self.seeder is not None:
            try:
                ledgered = bool(self.seeder.ledgered(ids))
            except (
                Exception
            ) as e:  # the ledger unreachable: pending entries hold; the next reconcile settles them
                log.warning("budget ledger_check_failed error=%s", type(e).__name__)
        return LeaseResult(refusal, held, totals, ledgered)

    def inflight(self, keys: Sequence[str]) -> int:
        rows = self._inflight_script(args=[self.prefix])
        return _count_calls([r.decode() if isinstance(r, bytes) else r for r in rows], keys)

    def totals(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        keys = list(keys)
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(self.prefix + "c:" + k, "s", "r")
        out: dict[str, tuple[int, int]] = {}
        for k, (s, r) in zip(keys, pipe.execute(), strict=True):
            if s is not None or r is not None:
                out[k] = (int(s or 0), int(r or 0))
        return out

    def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        import re

        pattern = self.prefix + "c:" + re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        keys = [
            k.decode() if isinstance(k, bytes) else k for k in self._r.scan_iter(match=pattern, count=500)
        ]
        return self.totals([k[len(self.prefix) + 2 :] for k in keys])

    def claim_once(self, key: str) -> bool:
        return bool(self._r.set(self.prefix + "claim:" + key, "1", nx=True, ex=3600 * 24 * 400))

    def sweep(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        due = int(self._r.zcount(self.prefix + "rexp", "-inf", now))
        self._sweep(args=[self.prefix, "", now])
        return due

    def close(self) -> None:
        self._stop_lease()
        self._r.close()
        if self.seeder is not None:
            self.seeder.close()


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
