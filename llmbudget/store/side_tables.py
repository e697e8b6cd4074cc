"""The ledger's two small tables beside the events: quota readings and the state key-value store.

Quota readings are JSON payloads by time and backend (`llmbudget quota` and the piggyback
readings); `state` holds small JSON values by (namespace, key): the ledger's identity, audit
checkpoints, dashboard settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..errors import ValidationError
from ..events import parse_timestamp
from .buckets import to_us
from .connection import Connections
from .rows import time_range


class SideTables(Connections):
    """Part of `SQLLedger`: the `quota_readings` and `state` tables."""

    def record_reading(self, reading: Mapping[str, Any]) -> None:
        for key in ("timestamp", "backend", "source"):
            if not reading.get(key):
                raise ValidationError(key, "is required in a quota reading")
        ts = to_us(parse_timestamp(reading["timestamp"]))
        payload = json.dumps(reading, default=str, sort_keys=True)
        with self._tx() as db:
            db.execute(
                "INSERT INTO quota_readings (ts_us, backend, source, payload) VALUES (?, ?, ?, ?)",
                (ts, str(reading["backend"]), str(reading["source"]), payload),
            )

    def readings(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        backend: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        conds, params = time_range(since, until)
        if backend is not None:
            conds.append("backend = ?")
            params.append(backend)
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        if limit is not None:  # the newest `limit`, returned oldest first
            sql = (
                f"SELECT payload FROM (SELECT payload, ts_us, id FROM quota_readings{where} "
                "ORDER BY ts_us DESC, id DESC LIMIT ?) AS t ORDER BY ts_us, id"
            )
            params.append(int(limit))
        else:
            sql = f"SELECT payload FROM quota_readings{where} ORDER BY ts_us, id"
        with self._read() as db:
            return [json.loads(r[0]) for r in db.execute(sql, params)]

    def latest_readings(self) -> dict[str, dict[str, Any]]:
        sql = (
            "SELECT q.backend, q.payload FROM quota_readings q JOIN (SELECT backend, MAX(id) AS id FROM "
            "quota_readings q2 WHERE ts_us = (SELECT MAX(ts_us) FROM quota_readings q3 WHERE q3.backend = q2.backend) "
            "GROUP BY backend) m ON q.id = m.id"
        )
        with self._read() as db:
            return {r[0]: json.loads(r[1]) for r in db.execute(sql)}

    def prune_readings(self, before: datetime, *, dry_run: bool = False) -> int:
        cutoff = to_us(before)
        if dry_run:
            with self._read() as db:
                return int(db.execute("SELECT COUNT(*) FROM quota_readings WHERE ts_us < ?", (cutoff,))[0][0])
        with self._tx() as db:
            n = int(db.execute("SELECT COUNT(*) FROM quota_readings WHERE ts_us < ?", (cutoff,))[0][0])
            db.execute("DELETE FROM quota_readings WHERE ts_us < ?", (cutoff,))
        return n

    # ------------------------------------------------------------------ state
    def get_state(self, namespace: str, key: str) -> dict[str, Any] | None:
        with self._read() as db:
            rows = db.execute("SELECT value FROM state WHERE namespace = ? AND key = ?", (namespace, key))
        return json.loads(rows[0][0]) if rows else None

    def set_state(self, namespace: str, key: str, value: dict[str, Any] | None) -> None:
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM state WHERE namespace = ? AND key = ?", (namespace, key))
            else:
                db.execute(
                    "INSERT INTO state (namespace, key, value, updated_us) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
                    "updated_us = excluded.updated_us",
                    (namespace, key, json.dumps(value, default=str, sort_keys=True), time.time_ns() // 1000),
                )

    def list_state(self, namespace: str) -> dict[str, dict[str, Any]]:
        with self._read() as db:
            rows = db.execute("SELECT key, value FROM state WHERE namespace = ? ORDER BY key", (namespace,))
        return {r[0]: json.loads(r[1]) for r in rows}
