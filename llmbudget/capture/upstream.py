"""The metered call's way upstream: a lean HTTP/1.1 client with a keep-alive pool per backend.

A metered call is one request with its whole body known and one answer, buffered or streamed, so
its way upstream needs far less than a general client: the request's head and body go out in one
write, the answer is parsed by `httptools` (llhttp, the parser uvicorn uses) as it arrives, and its
connection goes back to the pool when the answer is complete. A pass-through on it costs about
half the CPU per call of the same pass-through on aiohttp (`bench/proxy_overhead.py`, `bare_lean`
against `bare`), which is what pays for metering. Everything else (unmetered pass-through, the
fallback translator, WebSocket relays) keeps the shared aiohttp session.

Errors are those the rest of the proxy already handles: `OSError` (could not connect),
`aiohttp.ServerDisconnectedError` (the upstream closed before its answer was complete),
`aiohttp.ClientPayloadError` (an answer that is not HTTP, or cut after its head),
`aiohttp.ServerTimeoutError` (connect or read timeout). Like aiohttp, a request is never retried: a metered call is not idempotent.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Final, cast

import aiohttp
import httptools
from yarl import URL

#: a streamed answer stops being read from the socket while this much is waiting for the client
_HIGH_WATER: Final = 1 << 20
#: an idle connection older than this is closed instead of reused
KEEPALIVE_S: Final = 60.0
#: an answer's status line and headers may take at most this many bytes (aiohttp allows 8 KiB a line)
MAX_HEAD: Final = 256 * 1024


class Origin:
    """Where a backend lives: what each request to it needs, worked out once."""

    __slots__ = ("base_path", "host", "host_header", "key", "port", "tls")

    def __init__(self, base_url: str) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = url.scheme == "https"
        self.host: str = url.host
        self.port: int = url.port or (443 if self.tls else 80)
        host = f"[{url.raw_host}]" if ":" in (url.raw_host or "") else url.raw_host or ""
        self.host_header = host if url.is_default_port() else f"{host}:{self.port}"
        #: the base URL's own path, encoded, no trailing slash: the request's path is appended
        self.base_path = url.raw_path.rstrip("/")
        self.key = (self.tls, self.host, self.port)


class UpstreamResponse:
    """One answer: status and headers as soon as they arrive, the body whole or chunk by chunk.

    Quacks like the part of `aiohttp.ClientResponse` the proxy uses: `status`, `raw_headers`,
    `read()`, `content.iter_any()`, `release()`; `header(name)` reads one header.
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_head",
        "_keep",
        "_paused",
        "_size",
        "_streaming",
        "_waiter",
        "raw_headers",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self.status = 0
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = ()
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._keep = False
        self._streaming = False
        self._paused = False
        self._error: BaseException | None = None
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ what the proxy reads
    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case)."""
        want = name.lower().encode("latin-1")
        for k, v in self.raw_headers:
            if k.lower() == want:
                return v.decode("latin-1")
        return None

    @property
    def content(self) -> UpstreamResponse:
        """`resp.content.iter_any()`, as with aiohttp."""
        return self

    async def read(self) -> bytes:
        """The whole body (raises if the answer was cut)."""
        while not self._done:
            await self._wait()
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return body

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Each piece of the body as it arrives (what is waiting is joined into one)."""
        self._streaming = True
        chunks = self._chunks
        while True:
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._size = 0
                if self._paused and self._conn is not None:
                    self._paused = False
                    self._conn.resume()
                yield data
            elif self._done:
                if self._error is not None:
                    raise self._error
                return
            else:
                await self._wait()

    def release(self) -> None:
        """Give the connection back (answer complete, keep-alive) or close it (anything else)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep and self._error is None:
            if self._paused:  # a reader that stopped early: the next answer must be read
                self._paused = False
                conn.resume()
            conn.idle()
        else:
            conn.close()

    # ------------------------------------------------------------------ fed by the connection
    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _started(self, status: int, raw: tuple[tuple[bytes, bytes], ...]) -> None:
        self.status = status
        self.raw_headers = raw
        if not self._head.done():
            self._head.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        if self._streaming:
            self._size += len(data)
            if self._size > _HIGH_WATER and not self._paused and self._conn is not None:
                self._paused = True
                self._conn.pause()
        self._wake()

    def _finish(self, keep_alive: bool) -> None:
        self._done = True
        self._keep = keep_alive
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: a cancelled caller never sees it, nothing to log
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream, parsing its answers with llhttp."""

    def __init__(
        self, pool: UpstreamPool, key: tuple[bool, str, int], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: UpstreamResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        self._raw: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._until_eof = False
        #: bytes received before the answer's head was complete
        self._head_bytes = 0
        #: read timeout: seconds allowed between two reads, `_last` the loop time of the last one
        self._read_timeout = 0.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ the client's side
    def send(self, head: bytes, body: bytes, read_timeout: float) -> UpstreamResponse:
        assert self.transport is not None
        resp = self.resp = UpstreamResponse(self)
        self._raw = []
        self._head_bytes = 0
        self._read_timeout = read_timeout
        self._last = self.loop.time()
        self._timer = self.loop.call_at(self._last + read_timeout, self._check_timeout)
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return resp

    def idle(self) -> None:
        """The answer was read whole: back to the pool for the next call."""
        self._stop_timer()
        self.resp = None
        if self.closed:
            return
        self.idle_since = self.loop.time()
        self.pool.put(self)

    def close(self) -> None:
        self._stop_timer()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        self._timer = None
        resp = self.resp
        if resp is None or resp._done:
            return
        due = self._last + self._read_timeout
        if self.loop.time() < due or resp._paused:  # read since, or waiting on our own client
            self._timer = self.loop.call_at(max(due, self.loop.time() + 0.05), self._check_timeout)
            return
        resp._fail(aiohttp.ServerTimeoutError(f"no data from the upstream for {self._read_timeout:g} s"))
        self.close()

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None or resp._done:  # bytes nobody asked for: this connection cannot be trusted
            self.close()
            return
        self._last = self.loop.time()
        if not resp._head.done():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                resp._fail(aiohttp.ClientPayloadError(f"the upstream's answer head is over {MAX_HEAD} bytes"))
                self.close()
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            resp._fail(aiohttp.ClientPayloadError(f"the upstream's answer is not valid HTTP/1.1 ({e})"))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close the transport: connection_lost settles the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.pool.forget(self)
        resp = self.resp
        if resp is None or resp._done:
            return
        if self._until_eof and resp._head.done():  # a body delimited by the connection's end
            resp._finish(keep_alive=False)
        elif resp._head.done():
            resp._fail(
                aiohttp.ClientPayloadError("the upstream closed the connection before the answer's end")
            )
        elif exc is not None:
            resp._fail(
                aiohttp.ClientOSError(getattr(exc, "errno", None) or 0, str(exc) or type(exc).__name__)
            )
        else:
            resp._fail(aiohttp.ServerDisconnectedError())

    # ------------------------------------------------------------------ httptools callbacks
    def on_message_begin(self) -> None:
        resp = self.resp
        if resp is not None and resp._done:
            # a second answer to one request (in the same read): the connection is out of step
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        resp = self.resp
        if resp is None or resp._done:
            return
        if 100 <= status < 200:  # 100 Continue and the like: the real answer follows
            self._interim = True
            self._raw = []
            return
        raw = tuple(self._raw)
        framed = status in (204, 304)
        for k, v in raw:
            lk = k.lower()
            if lk == b"content-length" or (lk == b"transfer-encoding" and b"chunked" in v.lower()):
                framed = True
                break
        self._until_eof = not framed
        resp._started(status, raw)

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp is not None and not resp._done:
            resp._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        resp = self.resp
        if resp is not None and not resp._done:
            self._stop_timer()
            resp._finish(keep_alive=self.parser.should_keep_alive() and not self._until_eof)


class UpstreamPool:
    """Keep-alive connections per upstream (scheme, host, port), shared by every metered call."""

    def __init__(self) -> None:
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        #: the system's trust store, made on the first https connection
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def put(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: _Connection) -> None:
        """A connection that closed (either end): never handed out again."""
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        ctx: ssl.SSLContext | None = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin.key, loop),
                    origin.host,
                    origin.port,
                    ssl=ctx,
                    server_hostname=origin.host if ctx is not None else None,
                )
        except TimeoutError:
            raise aiohttp.ServerTimeoutError(f"connecting took longer than {timeout:g} s") from None
        self._all.add(conn)
        return conn

    def _take(self, key: tuple[bool, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
        return None

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send one request (`target`: the encoded path and query) and wait for the answer's head."""
        if self._closed:
            raise aiohttp.ClientConnectionError("the upstream pool is closed")
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
            # a value with a line break of its own (say a configured key) would smuggle a header in
            raise aiohttp.ClientError("a header of the request holds a line break; nothing was sent")
        try:
            head = text.encode("latin-1")
        except UnicodeEncodeError:  # a configured key or value beyond latin-1: sent as UTF-8
            head = text.encode("utf-8")
        conn = self._take(origin.key) or await self._connect(origin, connect_timeout)
        resp = conn.send(head, body, read_timeout)
        try:
            await resp._head
        except BaseException:
            resp.release()  # cut or cancelled mid-answer: the connection is closed, never reused
            raise
        return resp

    async def close(self) -> None:
        """Close every connection, idle or busy."""
        self._closed = True
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
