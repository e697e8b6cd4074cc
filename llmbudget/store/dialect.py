"""The SQL spelling the ledger and the budget counters share: statements are written once, with `?`
placeholders, and rewritten for PostgreSQL (psycopg's `%s`) by `pg_sql`.

The statements never hold a literal `?` or `%` (values always travel as parameters).
"""

from __future__ import annotations

#: a statement's parameter (PostgreSQL's `= ANY(?)` takes a list)
Param = str | int | float | None | list[str] | list[int]

_cache: dict[str, str] = {}


def pg_sql(sql: str) -> str:
    """`sql` with its `?` placeholders as `%s` (cached: the same few statements run on every call)."""
    out = _cache.get(sql)
    if out is None:
        if len(_cache) > 10_000:  # statements built per time range (seeds): never an unbounded cache
            _cache.clear()
        out = _cache[sql] = sql.replace("?", "%s")
    return out
