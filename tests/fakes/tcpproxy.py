"""A TCP relay on 127.0.0.1 that a test can cut and restore: a database outage without touching the server.

`TcpRelay(("127.0.0.1", 5432)).start()` listens on a free port and relays every connection to
the target. `cut()` closes every relayed connection and refuses new ones (connection refused, as
when the server is down); `restore()` accepts again. It runs in one daemon thread (selectors).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class TcpRelay:
    """Relay 127.0.0.1:`port` to `target`; `cut()` / `restore()` make an outage and end it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    def start(self) -> TcpRelay:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listen()
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        ls.setblocking(False)
        with self._lock:
            self._listener = ls
            self._sel.register(ls, selectors.EVENT_READ, "accept")
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones until `restore()`."""
        with self._lock:
            ls, self._listener = self._listener, None
            if ls is not None:
                self._sel.unregister(ls)
                ls.close()
            for a in list(self._pairs):
                self._drop(a)
        self._wake()

    def restore(self) -> None:
        """Accept connections again."""
        if self._listener is None:
            self._listen()

    def stop(self) -> None:
        self.cut()
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _drop(self, a: socket.socket) -> None:
        b = self._pairs.pop(a, None)
        for s in (a, b):
            if s is None:
                continue
            self._pairs.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            with contextlib.suppress(OSError):
                s.close()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=0.5):
                with self._lock:
                    if key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif key.data == "accept":
                        if self._listener is None:
                            continue
                        with contextlib.suppress(BlockingIOError):
                            client, _ = self._listener.accept()
                            try:
                                upstream = socket.create_connection(self.target, timeout=5)
                            except OSError:
                                client.close()
                                continue
                            for s in (client, upstream):
                                s.setblocking(False)
                            self._pairs[client], self._pairs[upstream] = upstream, client
                            self._sel.register(client, selectors.EVENT_READ, "data")
                            self._sel.register(upstream, selectors.EVENT_READ, "data")
                    else:
                        src = key.fileobj
                        assert isinstance(src, socket.socket)
                        dst = self._pairs.get(src)
                        if dst is None:
                            continue
                        try:
                            data = src.recv(65536)
                            if not data:
                                raise OSError("closed")
                            dst.setblocking(True)
                            dst.sendall(data)
                            dst.setblocking(False)
                        except OSError:
                            self._drop(src)
