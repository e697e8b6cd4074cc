"""CLI command: demo (the proxy and dashboard with a simulated upstream and simulated agents)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

import typer

from .. import logsafe
from ..errors import ValidationError
from . import common
from .serve import _run_until_stopped, _server_class, check_listen, tune_gc

if TYPE_CHECKING:  # start-up: only a type here; the services load when the command runs
    from ..services import Services

# The command's modules are imported when it runs: `llmbudget --help` and the other commands
# do not load them at start-up.


def demo(
    db: common.DbOpt = None,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (default 4141).")] = 4141,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
) -> None:
    """Watch llmbudget work with no API key: proxy, dashboard, a simulated provider and simulated agents.

    The ledger is a temporary SQLite file unless --db names one (then it is kept).
    """
    import uvicorn

    from ..demo.run import run_demo  # start-up: loaded when the command runs

    if duration is not None and not 0 < duration <= 7 * 86400:
        raise ValidationError("--duration", f"must be a number of seconds above 0, got {duration:g}")
    check_listen("127.0.0.1", port)
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logsafe.install()

    def server_factory(app: Callable[..., Awaitable[None]], services: Services) -> uvicorn.Server:
        tune_gc()
        cfg = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            interface="asgi3",
            access_log=False,
            proxy_headers=False,
            log_level="warning",
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=5,
        )
        return _server_class()(cfg, services)

    def announce(text: str) -> None:
        common.console.print(text, markup=False, highlight=False, soft_wrap=True)

    run_demo(
        port=port,
        db=db,
        duration=duration,
        announce=announce,
        server_factory=server_factory,
        run_server=_run_until_stopped,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("demo")(demo)
