"""The `llmbudget` command: a Typer app whose commands are thin shells over the library.

Each area registers its commands from its own module (reports, prices, db, serve, budget, quota).
"""

from __future__ import annotations

import sys

import typer

from ..errors import LLMBudgetError
from . import common

app = typer.Typer(
    name="llmbudget",
    help="Meter, budget and watch the quota of LLM calls.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from . import analyze, budget, db, prices, quota, reports, serve

    for module in (serve, reports, prices, db, budget, quota, analyze):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: LLMBudgetError becomes a one-line red message and exit code 1."""
    from ..store import install_signal_handlers

    install_signal_handlers()  # SIGTERM/SIGINT flush every open ledger before the process ends
    try:
        # without standalone mode click returns a command's `typer.Exit(code)` instead of raising it
        rc = app(args=argv, prog_name="llmbudget", standalone_mode=False)
        if isinstance(rc, int) and rc:
            return rc
    except LLMBudgetError as e:
        common.fail(str(e))
        return 1
    except KeyboardInterrupt:
        common.fail("interrupted")
        return 130
    except SystemExit as e:  # typer.Exit inside standalone_mode=False
        return int(e.code or 0)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
