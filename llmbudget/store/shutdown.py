"""Flushing every open ledger at exit and on SIGTERM/SIGINT.

Every ledger registers itself here when it opens. At interpreter exit (`atexit`) all of them are
closed, which flushes their queues. Signal handlers are installed only when asked for, by
`install_signal_handlers()` (the server and the CLI call it): they flush every open ledger, then
hand the signal on to whatever handler was there before (or, for the default action, re-deliver it
so the process ends with the usual status).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from types import FrameType
from typing import Any, Protocol

log = logging.getLogger(__name__)


class _Flushable(Protocol):
    def flush(self) -> None: ...
    def close(self) -> None: ...


_open: weakref.WeakSet[Any] = weakref.WeakSet()
_previous: dict[int, Any] = {}
_lock = threading.Lock()


def register(ledger: _Flushable) -> None:
    """Track an open ledger so that exit and signals flush it."""
    with _lock:
        _open.add(ledger)


def unregister(ledger: _Flushable) -> None:
    with _lock:
        _open.discard(ledger)


def flush_all() -> None:
    """Flush every open ledger; errors are logged, never raised (this runs on the way out)."""
    for ledger in list(_open):
        try:
            ledger.flush()
        except Exception:
            log.exception("ledger_flush_failed_at_shutdown")


def close_all() -> None:
    """Close (and so flush) every open ledger."""
    for ledger in list(_open):
        try:
            ledger.close()
        except Exception:
            log.exception("ledger_close_failed_at_shutdown")


atexit.register(close_all)


def _handler(signum: int, frame: FrameType | None) -> None:
    flush_all()
    prev = _previous.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
        return
    if prev == signal.SIG_IGN:
        return
    # the default action: restore it and re-deliver, so the exit status says "killed by signal"
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_handlers(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> bool:
    """Flush open ledgers on SIGTERM/SIGINT, chaining to the previous handlers.

    Call from the main thread; returns False (and does nothing) elsewhere. Calling it twice is
    harmless.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in signals:
        current = signal.getsignal(sig)
        if current is _handler:
            continue
        _previous[sig] = current
        signal.signal(sig, _handler)
    return True
