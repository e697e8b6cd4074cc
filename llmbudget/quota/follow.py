"""Follow growing JSONL log files by polling their sizes (no inotify): only complete new lines.

Each file keeps its byte offset; a partial last line (a writer mid-line) is held until its newline
arrives. A file that shrank or was replaced (new inode) is read again from the start. New files
are picked up on every poll.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: most bytes read from one file in one poll (a huge backlog is read over several polls)
MAX_READ = 8 * 1024 * 1024


@dataclass(slots=True)
class _Tail:
    offset: int = 0
    inode: int = -1
    lineno: int = 0
    partial: bytes = b""
    #: wall-clock time the file last grew (its mtime when first seen)
    grew_at: float = 0.0


@dataclass(slots=True)
class NewLine:
    """One complete line that appeared in a followed file."""

    path: Path
    lineno: int
    text: str


@dataclass
class LogFollower:
    """Polls the files `discover()` returns and hands out lines added since the last poll."""

    discover: Callable[[], list[Path]]
    _tails: dict[Path, _Tail] = field(default_factory=dict)

    def poll(self) -> list[NewLine]:
        """Every complete line added since the last poll, file by file, in file order."""
        out: list[NewLine] = []
        for path in self.discover():
            try:
                st = path.stat()
            except OSError:
                continue
            tail = self._tails.get(path)
            if tail is None or st.st_ino != tail.inode or st.st_size < tail.offset:
                tail = self._tails[path] = _Tail(inode=st.st_ino, grew_at=st.st_mtime)
            if st.st_size == tail.offset:
                continue
            try:
                with path.open("rb") as fh:
                    fh.seek(tail.offset)
                    data = fh.read(min(st.st_size - tail.offset, MAX_READ))
            except OSError:
                continue
            tail.offset += len(data)
            tail.grew_at = max(tail.grew_at, time.time()) if tail.lineno else st.st_mtime
            data = tail.partial + data
            *lines, tail.partial = data.split(b"\n")
            for raw in lines:
                tail.lineno += 1
                if raw.strip():
                    out.append(NewLine(path, tail.lineno, raw.decode("utf-8", "replace")))
        return out

    def idle_for(self, path: Path, now: float | None = None) -> float:
        """Seconds since `path` last grew (0 for a file never seen)."""
        tail = self._tails.get(path)
        if tail is None:
            return 0.0
        return (time.time() if now is None else now) - tail.grew_at


def files_under(roots: list[Path], pattern: str = "*.jsonl") -> list[Path]:
    """Every file matching `pattern` under the given files and directories, sorted."""
    found: set[Path] = set()
    for r in roots:
        if r.is_file():
            found.add(r)
        elif r.is_dir():
            found.update(p for p in r.rglob(pattern) if p.is_file())
    return sorted(found, key=lambda p: (os.fspath(p.parent), p.name))
