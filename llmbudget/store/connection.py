"""What every part of the SQL ledger stands on: `DB`, the connection wrapper a back-end hands out,
and `Connections`, the back-end's two connection hooks each part calls.

A back-end (`llmbudget/store/sqlite.py`, `llmbudget/store/postgres.py`) implements `_tx` and
`_read`; the parts of `SQLLedger` (writes, rollups, reads, cost reports, side tables, the audit
replay) only call them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol


class DB(Protocol):
    """A connection wrapper: `?` placeholders, results as lists of tuples."""

    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Connections(ABC):
    """The back-end's connections, as every part of the SQL ledger uses them."""

    dialect: str = ""

    @abstractmethod
    def _tx(self) -> AbstractContextManager[DB]:
        """A write transaction (serialised against other writers)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[DB]:
        """A connection for reads."""
