"""CLI commands: serve (the proxy, `/healthz` and the JSON API in one process)."""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from .. import logsafe
from ..access.policy import check_server_access, is_loopback  # noqa: F401  (is_loopback: re-exported)
from ..errors import LLMBudgetError, ValidationError
from . import common
from .workers import WORKER_ENV, supervise

if TYPE_CHECKING:
    import uvicorn

    from ..services import Services  # start-up: only a type here; the services load when serve runs

# uvicorn and the app are imported when `serve` runs: `llmbudget --help` and the other commands
# do not load them at start-up.


def check_bind(host: str, admin_token_env: str | None) -> None:
    """Refuse a non-loopback address without an admin token, or a token variable that is empty."""
    check_server_access(host, admin_token_env)


_LOG_LEVELS = ("debug", "info", "warning", "error")
#: how long an idle client connection stays open, in seconds
KEEP_ALIVE_S = 75


def check_listen(host: str, port: int) -> None:
    """Fail with one clear line when `host:port` cannot be listened on (bad port, address in use)."""
    if not 1 <= port <= 65535:
        raise ValidationError("--port", f"must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise LLMBudgetError(
            f"cannot listen on {host}: the address does not resolve ({e}); check --host"
        ) from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            hint = (
                "is another `llmbudget serve` running? stop it or choose another --port"
                if e.errno == errno.EADDRINUSE
                else "check --host and --port"
            )
            raise LLMBudgetError(f"cannot listen on {host}:{port}: {e.strerror or e}; {hint}") from None


def serve(
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1 or server.host).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 4141 or server.port).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    workers: Annotated[
        int,
        typer.Option(
            "--workers", help="Processes serving the port, each with its own event loop (default 1)."
        ),
    ] = 1,
) -> None:
    """Serve the metering proxy, /healthz and the JSON API (one port; one process unless --workers)."""
    import uvicorn

    from ..app import build_app  # start-up: loaded when the command runs

    if not 1 <= workers <= 64:
        raise ValidationError("--workers", f"must be between 1 and 64, got {workers}")
    if log_level.lower() not in _LOG_LEVELS:
        raise ValidationError("--log-level", f"must be one of {', '.join(_LOG_LEVELS)}, got {log_level!r}")
    cfg = common.load(config)
    host = host or cfg.server.host
    port = port if port is not None else cfg.server.port
    check_bind(host, cfg.server.admin_token_env)
    cfg.server.host, cfg.server.port = host, port  # the access rules follow the address actually bound
    token_env = cfg.server.admin_token_env
    if token_env and len(os.environ.get(token_env, "")) < 24:
        common.err_console.print(
            f"warning: ${token_env} is shorter than 24 characters; anyone who can reach the port may guess "
            "it (python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes a good one)",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    index = os.environ.get(WORKER_ENV)
    if index is None:
        check_listen(host, port)
    if workers > 1 and index is None:
        child = ["serve", "--host", host, "--port", str(port), "--log-level", log_level]
        child += ["--config", str(config)] if config else []
        child += ["--db", str(db)] if db else []
        common.err_console.print(
            f"llmbudget serving on http://{host}:{port} with {workers} worker processes",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(supervise(child, workers))
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # every record of every logger (uvicorn's WebSocket lines included): no secrets, no forged lines
    logsafe.install()
    # a worker of several keeps its own audit log and spool (worker 0 the usual ones)
    from ..services import Services  # start-up: loaded when the command runs

    services = Services.create(cfg, db_url=db, instance=f"w{index}" if index not in (None, "0") else "")
    try:
        app = build_app(services)
        names = ", ".join(f"/{n}" for n in sorted(cfg.backends)) or "(no backends configured)"
        if index is None:
            common.err_console.print(
                f"llmbudget serving on http://{host}:{port}  backends: {names}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        tune_gc()
        # No access log: uvicorn's prints query strings (a Gemini `?key=` would land in it) and
        # costs ~15% CPU; the proxy logs what it does itself, without keys.
        uv_config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            interface="asgi3",
            access_log=False,
            # X-Forwarded-* rewriting is for apps behind a proxy; llmbudget uses no client address
            proxy_headers=False,
            log_level=log_level.lower(),
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=10,
            # longer than the idle timeouts of clients' pools (httpx 5 s, aiohttp 15 s) and load
            # balancers (60 s is usual): the client side closes an idle connection first, so a
            # request never meets a connection the server is closing (uvicorn's default is 5 s)
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        sockets = None if index is None else [_shared_socket(host, port)]
        _run_until_stopped(_server_class()(uv_config, services), sockets)
    finally:
        services.close()  # flush every accepted event before the process ends


def tune_gc() -> None:
    """Keep the garbage collector off the request path of a long-running server.

    Everything loaded so far (price book, config, modules: tens of thousands of objects) is moved
    out of the collector's view with `gc.freeze()`, and young collections run every 10,000
    allocations instead of 700: a proxied call allocates a few hundred objects, so the default
    collected every few requests and a full pass over the price book cost milliseconds at the
    99th percentile. Measured with bench/proxy_overhead.py at concurrency 100: about 15% less
    CPU per request and half the p99.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 50)


def _server_class() -> Callable[[uvicorn.Config, Services], uvicorn.Server]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, plus: open dashboard streams end at the first stop signal (else they hold shutdown)."""

        def __init__(self, config: uvicorn.Config, services: Services) -> None:
            super().__init__(config)
            self.services = services

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            hub = self.services.live
            if hub is not None:
                hub.end_streams()
            super().handle_exit(sig, frame)

    return Server


class _Stop(Exception):
    """SIGTERM after uvicorn's graceful shutdown: a normal way to stop."""


def _shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket several processes bind at once (SO_REUSEPORT: the kernel spreads connections)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _run_until_stopped(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
    """Run uvicorn; Ctrl-C and SIGTERM end it cleanly (uvicorn re-raises them after its shutdown)."""

    def on_term(signum: int, frame: object) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        server.run(sockets=sockets)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("serve")(serve)
