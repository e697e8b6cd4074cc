"""The SQL spelling the ledger and the budget counters share: statements are written once, with `?`
placeholders, and rewritten for PostgreSQL (psycopg's `%s`) by `pg_sql`.

The statements never hold a literal `?` or `%` (values always travel as parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

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


#: rows per multi-row statement, largest first: a batch goes in as a few statements, not one per row
ROW_CHUNKS = (256, 64, 16, 4, 1)


def multirow_statements(head: str, row: str, tail: str = "") -> dict[int, str]:
    """`head` + `row` repeated (comma-separated) + `tail`, for each size in ROW_CHUNKS."""
    return {n: head + ", ".join([row] * n) + tail for n in ROW_CHUNKS}


def execute_in_chunks(
    execute: Callable[[str, list[Any]], object],
    statements: Mapping[int, str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Write `rows` with the few multi-row `statements` (from `multirow_statements`) that hold them.

    SQLite lets go of the GIL around every statement step; one step per row (`executemany`) made a
    writing thread and the event loop trade the GIL hundreds of times per batch, each trade a
    context switch on the proxy's path. A multi-row statement steps once for up to 256 rows.
    """
    i, n = 0, len(rows)
    for size in ROW_CHUNKS:
        sql = statements[size]
        while n - i >= size:
            execute(sql, [v for r in rows[i : i + size] for v in r])
            i += size
