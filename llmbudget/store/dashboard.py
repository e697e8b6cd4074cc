"""The dashboard's reads and small writes on the ledger: recent activity, session ends, alert thresholds.

Every read here is bounded by an index (time, session) or a LIMIT, so the overview stays fast at
millions of events; totals come from the rollups through `Ledger.costs`, never from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TypedDict

from ..errors import ValidationError
from ..money import decimal_str, from_nano
from .base import Ledger
from .sqlbase import SQLLedger

#: threshold scopes: `session` compares an agent's spend in its current session, `agent` its spend today
THRESHOLD_SCOPES = ("session", "agent")
#: the `agent` value of a threshold that applies to every agent without one of its own
ANY_AGENT = "*"


def _sql(ledger: Ledger) -> SQLLedger:
    if not isinstance(ledger, SQLLedger):
        raise ValidationError("ledger", f"the dashboard needs a SQL ledger, got {type(ledger).__name__}")
    return ledger


def newest_calls(ledger: Ledger, newest: int, per_agent: int) -> list[tuple[Any, ...]]:
    """(agent, session, ts_us, cost_nano, tokens) of each agent's newest `per_agent` calls among the
    newest `newest` calls, newest first (so agents come in the order of their last call). The time
    index gives the newest calls; only the ranked rows leave the database."""
    with _sql(ledger)._read() as db:
        return db.execute(
            "SELECT agent, session, ts_us, cost_nano, tokens FROM (SELECT agent, session, ts_us, cost_nano, "
            "tokens, ROW_NUMBER() OVER (PARTITION BY agent ORDER BY ts_us DESC, id DESC) AS n FROM (SELECT "
            "id, agent, session, ts_us, cost_nano, input_tokens + output_tokens AS tokens FROM events "
            "ORDER BY ts_us DESC, id DESC LIMIT ?) AS latest WHERE agent IS NOT NULL AND agent <> '') AS t "
            "WHERE n <= ? ORDER BY ts_us DESC, agent",
            (newest, per_agent),
        )


def spend_by_minute(ledger: Ledger, now_us: int, minutes: int = 60) -> list[tuple[str, int, int]]:
    """(agent, minute of age, cost_nano) over the last `minutes` minutes before `now_us`, summed in SQL.

    Ages are counted back from `now_us` (a call in the future is of age 0), so 5-minute slots of
    age made of them are exact (`agentstats.runaway`)."""
    with _sql(ledger)._read() as db:
        rows = db.execute(
            "SELECT agent, age, SUM(cost_nano) FROM (SELECT agent, CASE WHEN ts_us >= ? THEN 0 ELSE "
            "(? - ts_us) / 60000000 END AS age, cost_nano FROM events WHERE ts_us > ? AND agent IS NOT NULL "
            "AND agent <> '') AS t GROUP BY agent, age",
            (now_us, now_us, now_us - minutes * 60_000_000),
        )
    return [(str(r[0]), int(r[1]), int(r[2] or 0)) for r in rows]


def agent_session_totals(ledger: Ledger, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], list[int]]:
    """(session, agent) -> [calls, tokens, cost_nano, unpriced_calls], through the session index."""
    out: dict[tuple[str, str], list[int]] = {}
    with _sql(ledger)._read() as db:
        for session, agent in pairs:
            r = db.execute(
                "SELECT COUNT(*), SUM(input_tokens + output_tokens), SUM(cost_nano), "
                "SUM(CASE WHEN cost_nano IS NULL THEN 1 ELSE 0 END) FROM events WHERE session = ? AND agent = ?",
                (session, agent),
            )[0]
            out[(session, agent)] = [int(v or 0) for v in r]
    return out


def session_breakdown(ledger: Ledger, session: str) -> list[dict[str, Any]]:
    """Per-agent totals of one session, most expensive first."""
    with _sql(ledger)._read() as db:
        rows = db.execute(
            "SELECT agent, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_nano), "
            "SUM(CASE WHEN cost_nano IS NULL THEN 1 ELSE 0 END), MIN(ts_us), MAX(ts_us) "
            "FROM events WHERE session = ? GROUP BY agent",
            (session,),
        )
    out = [
        {
            "agent": r[0],
            "calls": int(r[1]),
            "input_tokens": int(r[2] or 0),
            "output_tokens": int(r[3] or 0),
            "tokens": int(r[2] or 0) + int(r[3] or 0),
            "cost_nano": int(r[4] or 0),
            "unpriced_calls": int(r[5] or 0),
            "first_us": int(r[6]),
            "last_us": int(r[7]),
        }
        for r in rows
    ]
    out.sort(key=lambda d: (-d["cost_nano"], -d["calls"], d["agent"] or ""))
    return out


# ---------------------------------------------------------------- session ends
def end_session(ledger: Ledger, session: str, *, reason: str = "client", ended_us: int | None = None) -> bool:
    """Mark a session ended; False when it already was and has had no call since.

    Ending is idempotent (the first end is kept) until the session is called again: a call after
    its end opens it again (see `web.data`), and ending it then moves the mark.
    """
    ended_us = ended_us if ended_us is not None else time.time_ns() // 1000
    with _sql(ledger)._tx() as db:
        mark = db.execute("SELECT ended_us FROM session_ends WHERE session = ?", (session,))
        if mark:
            last = db.execute("SELECT MAX(ts_us) FROM events WHERE session = ?", (session,))[0][0]
            if last is None or int(last) <= int(mark[0][0]):
                return False
            db.execute(
                "UPDATE session_ends SET ended_us = ?, reason = ? WHERE session = ?",
                (max(ended_us, int(last)), reason, session),
            )
            return True
        db.execute(
            "INSERT INTO session_ends (session, ended_us, reason) VALUES (?, ?, ?)",
            (session, ended_us, reason),
        )
    return True


def session_ends(ledger: Ledger, sessions: list[str]) -> dict[str, tuple[int, str]]:
    """session -> (ended_us, reason) for the sessions a client ended."""
    out: dict[str, tuple[int, str]] = {}
    if not sessions:
        return out
    with _sql(ledger)._read() as db:
        for i in range(0, len(sessions), 500):
            chunk = sessions[i : i + 500]
            marks = ", ".join("?" * len(chunk))
            for s, us, reason in db.execute(
                f"SELECT session, ended_us, reason FROM session_ends WHERE session IN ({marks})", chunk
            ):
                out[s] = (int(us), str(reason))
    return out


def session_exists(ledger: Ledger, session: str) -> bool:
    with _sql(ledger)._read() as db:
        return bool(db.execute("SELECT 1 FROM sessions WHERE session = ?", (session,)))


# ---------------------------------------------------------------- alert thresholds
class ThresholdDict(TypedDict):
    scope: str
    agent: str
    limit_usd: str
    limit_nano: int
    auto_pause: bool
    updated_us: int


@dataclass(frozen=True, slots=True)
class Threshold:
    """Alert when an agent's spend reaches `limit_nano` (per session, or today); optionally pause it."""

    scope: str
    agent: str
    limit_nano: int
    auto_pause: bool
    updated_us: int = 0

    def to_dict(self) -> ThresholdDict:
        return {
            "scope": self.scope,
            "agent": self.agent,
            "limit_usd": decimal_str(from_nano(self.limit_nano)),
            "limit_nano": self.limit_nano,
            "auto_pause": self.auto_pause,
            "updated_us": self.updated_us,
        }


def list_thresholds(ledger: Ledger) -> list[Threshold]:
    with _sql(ledger)._read() as db:
        rows = db.execute(
            "SELECT scope, agent, limit_nano, auto_pause, updated_us FROM alert_thresholds ORDER BY scope, agent"
        )
    return [Threshold(str(r[0]), str(r[1]), int(r[2]), bool(r[3]), int(r[4])) for r in rows]


def set_threshold(ledger: Ledger, t: Threshold) -> Threshold:
    """Create or replace the threshold of (scope, agent)."""
    if t.scope not in THRESHOLD_SCOPES:
        raise ValidationError("scope", f"must be one of {', '.join(THRESHOLD_SCOPES)}, got {t.scope!r}")
    if not t.agent or len(t.agent) > 200:
        raise ValidationError("agent", "must be an agent name (1 to 200 characters) or '*' for every agent")
    if t.limit_nano <= 0:
        raise ValidationError("limit_usd", "must be more than 0")
    now = time.time_ns() // 1000
    with _sql(ledger)._tx() as db:
        db.execute(
            "INSERT INTO alert_thresholds (scope, agent, limit_nano, auto_pause, updated_us) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, agent) DO UPDATE SET limit_nano = excluded.limit_nano, "
            "auto_pause = excluded.auto_pause, updated_us = excluded.updated_us",
            (t.scope, t.agent, t.limit_nano, 1 if t.auto_pause else 0, now),
        )
    return Threshold(t.scope, t.agent, t.limit_nano, t.auto_pause, now)


def delete_threshold(ledger: Ledger, scope: str, agent: str) -> bool:
    with _sql(ledger)._tx() as db:
        found = bool(
            db.execute("SELECT 1 FROM alert_thresholds WHERE scope = ? AND agent = ?", (scope, agent))
        )
        db.execute("DELETE FROM alert_thresholds WHERE scope = ? AND agent = ?", (scope, agent))
    return found


def hourly_by_backend(ledger: Ledger, start_us: int, end_us: int) -> list[tuple[int, str, int]]:
    """(hour, backend, cost_nano) from the hourly rollups in [start, end): one query for the daily chart."""
    h0, h1 = start_us // 3_600_000_000, -(-end_us // 3_600_000_000)
    with _sql(ledger)._read() as db:
        rows = db.execute(
            "SELECT hour, backend, SUM(cost_nano) FROM rollup_hourly WHERE hour >= ? AND hour < ? "
            "GROUP BY hour, backend",
            (h0, h1),
        )
    return [(int(r[0]), str(r[1]), int(r[2] or 0)) for r in rows]
