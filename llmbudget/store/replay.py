"""Replaying the audit log (the write-ahead record) into the database: what makes `kill -9` lose nothing.

`record()` writes an event's line to the audit log before queueing it, so after a crash every
accepted event is in the file even when it never reached the database. At start-up the ledger
reads the file from its **checkpoint** (a byte offset, stored in the database per machine and
file, with the file's device and inode and the 64 bytes before the offset, so a rotated file, or
one truncated in place and written again, starts over) and stores the lines of its
own database that are missing, idempotent on `id`. Lines are checked by id first (one indexed
`IN (...)` per 2,000 lines); only missing ones are parsed into events.

The checkpoint moves while the ledger runs, too: every `periodic_s` the writer thread notes the
file's size and how many events the process had accepted; once all of those are committed, the
lines up to that size are checked (any missing, from another process that died, are stored) and
the checkpoint moves there. A clean close moves it to the end. A restart after a kill therefore
reads at most the last minute or so of the file.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..errors import LLMBudgetError
from ..events import UsageEvent
from .jsonl import AuditLog
from .side_tables import SideTables
from .writer import BatchWriter

log = logging.getLogger(__name__)

#: state namespace of the checkpoints
CHECKPOINTS = "audit_checkpoint"
_CHUNK = 2000
_TAIL = 64  # bytes before the checkpoint kept with it
_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]


def _tail(f: BinaryIO, offset: int) -> str:
    """The bytes just before `offset` (hex): a file truncated in place and written again past the
    checkpoint (logrotate's `copytruncate` keeps the inode) no longer has them there."""
    n = min(offset, _TAIL)
    f.seek(offset - n)
    return f.read(n).hex()


class AuditReplay(SideTables):
    """Part of `SQLLedger`: start-up replay and the moving checkpoint of its audit log.

    The checkpoints are kept in the state table, hence `SideTables` underneath.
    """

    audit_path: Path | None
    ledger_id: str
    _audit: AuditLog | None
    _writer: BatchWriter
    _cp_pending: tuple[int, int] | None

    def checkpoint_key(self) -> str:
        """The checkpoint's key: this machine and the audit file's absolute path."""
        return f"{socket.gethostname()}:{Path(self.audit_path or '').absolute()}"

    def replay_audit(self, *, from_end: bool = False, upto: int | None = None) -> int:
        """Store this database's audit lines it does not have, from the checkpoint to `upto` (default: the end).

        `from_end` (a database just created) starts the checkpoint at the file's end: the lines
        already there belong to an earlier database. Returns how many events were stored.
        """
        if self.audit_path is None:
            return 0
        try:
            f = open(self.audit_path, "rb")  # noqa: SIM115 -- closed below
        except FileNotFoundError:
            return 0
        with f:
            st = os.fstat(f.fileno())
            key = self.checkpoint_key()
            cp = self.get_state(CHECKPOINTS, key)
            start = 0
            if (
                cp
                and cp.get("dev") == st.st_dev
                and cp.get("ino") == st.st_ino
                and 0 <= int(cp.get("offset", 0)) <= st.st_size
                and cp.get("tail") in (None, _tail(f, int(cp["offset"])))  # None: an older checkpoint
            ):
                start = int(cp["offset"])
            end = st.st_size if upto is None else min(upto, st.st_size)
            if from_end and cp is None:
                start = end
            if start >= end and cp is not None and int(cp.get("offset", -1)) == start:
                return 0
            added, pos = self._replay_range(f, start, end) if start < end else (0, start)
            self.set_state(
                CHECKPOINTS,
                key,
                {
                    "dev": st.st_dev,
                    "ino": st.st_ino,
                    "offset": pos,
                    "tail": _tail(f, pos),
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
            )
        if added:
            log.warning("audit_replayed path=%s added=%d from=%d to=%d", self.audit_path, added, start, pos)
        return added

    def _replay_range(self, f: BinaryIO, start: int, end: int) -> tuple[int, int]:
        """Store missing lines in [start, end); returns (events stored, offset after the last whole line)."""
        f.seek(start)
        tag = f',"ledger":"{self.ledger_id}"}}'.encode()
        pos = start
        added = 0
        chunk: list[tuple[str, str]] = []
        for raw in f:
            if pos + len(raw) > end or not raw.endswith(b"\n"):
                break  # a line still being written, or past the range
            pos += len(raw)
            line = raw.rstrip(b"\r\n")
            if not line.endswith(tag):
                continue  # another database's line, or from before lines were tagged
            text = line.decode("utf-8", "replace")
            try:
                ev_id = _scanstring(text, 7)[0] if text.startswith('{"id":"') else json.loads(text)["id"]
            except (ValueError, KeyError, TypeError):
                self._writer.quarantine_raw(text, "the audit line cannot be read as JSON")
                continue
            chunk.append((ev_id, text))
            if len(chunk) >= _CHUNK:
                added += self._replay_chunk(chunk)
                chunk = []
        if chunk:
            added += self._replay_chunk(chunk)
        return added, pos

    def _replay_chunk(self, chunk: list[tuple[str, str]]) -> int:
        have = self._existing_ids([i for i, _ in chunk])
        if len(have) < len(chunk) and self._writer.quarantine is not None:
            have |= self._writer.quarantine.ids()  # refused once already: listed, not retried
        events: list[UsageEvent] = []
        for ev_id, text in chunk:
            if ev_id in have:
                continue
            try:
                obj = json.loads(text)
                obj.pop("ledger", None)
                events.append(UsageEvent.from_dict(obj))
            except (LLMBudgetError, ValueError, TypeError) as e:
                self._writer.quarantine_raw(text, f"the audit line is not a valid event: {e}")
        if not events:
            return 0
        return self._writer.commit_or_split(events)

    def _existing_ids(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        with self._read() as db:
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                found.update(
                    r[0]
                    for r in db.execute(
                        f"SELECT id FROM events WHERE id IN ({', '.join('?' * len(part))})", part
                    )
                )
        return found

    def _checkpoint(self, final: bool = False) -> None:
        """Move the checkpoint to where every line is known to be stored (runs in the writer thread)."""
        if self._audit is None or self.audit_path is None:
            return
        if final:
            self.replay_audit()
            return
        try:
            size = os.stat(self.audit_path).st_size
        except FileNotFoundError:
            return
        noted, self._cp_pending = self._cp_pending, (size, self._writer.accepted)
        if noted is None:
            return
        if self._writer.done < noted[1]:  # events accepted back then are not all stored yet
            self._cp_pending = noted
            return
        self.replay_audit(upto=noted[0])
