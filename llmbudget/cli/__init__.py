"""The `llmbudget` command: a Typer app whose commands are thin shells over the library.

Each area registers its commands from its own module (reports, prices, db, serve, budget, quota).
`main` is the one place that turns what goes wrong into what the user sees, for every command
registered now or later: a usage error is one line and exit 2, an `LLMBudgetError` one red line
and exit 1, anything unexpected one red line, a hint and exit 1 (the traceback only with
`--debug` or `LLMBUDGET_DEBUG=1`). Never a Python traceback by default.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Annotated, Any

import typer
from typer.main import get_command

from .. import __version__
from ..errors import CommandNotRun, LLMBudgetError
from ..store import install_signal_handlers
from . import (
    analyze,
    budget,
    common,
    db,
    demo,
    import_cmd,
    keys,
    prices,
    providers_cmd,
    quota,
    reports,
    run,
    serve,
)

#: set to 1 (or true/yes) to see the traceback of an unexpected error
ENV_DEBUG = "LLMBUDGET_DEBUG"

app = typer.Typer(
    name="llmbudget",
    help="Meter, budget and watch the quota of LLM calls.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"llmbudget {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help=f"Show the Python traceback of an unexpected error (or set {ENV_DEBUG}=1)."
        ),
    ] = False,
) -> None:
    """Meter, budget and watch the quota of LLM calls."""


def _register() -> None:
    for module in (
        serve,
        demo,
        reports,
        prices,
        db,
        import_cmd,
        budget,
        quota,
        analyze,
        keys,
        providers_cmd,
        run,
    ):
        module.register(app)


_register()

# Typer 0.29 carries its own copy of Click (`typer._click`); older Typer re-exports Click's own
# classes. Either way typer.BadParameter descends from the UsageError and ClickException in use.
_CLICK_EXCEPTION: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)
_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _debug_wanted(args: list[str]) -> bool:
    if os.environ.get(ENV_DEBUG, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    # only before `--`: what follows belongs to a wrapped command (`llmbudget run -- CMD --debug`)
    head = args[: args.index("--")] if "--" in args else args
    return "--debug" in head


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _command_path(args: list[str]) -> str:
    """`llmbudget costs` for `costs --by`: the command the arguments name, for errors raised without a context."""
    cmd: Any = get_command(app)
    path = ["llmbudget"]
    for arg in args:
        sub = getattr(cmd, "commands", {}).get(arg)
        if sub is None:
            if not arg.startswith("-"):
                break
            continue
        cmd, path = sub, [*path, arg]
    return " ".join(path)


def _usage_error(e: Any, args: list[str]) -> int:
    """A Click usage error as one line naming the command's --help; exit 2."""
    ctx = getattr(e, "ctx", None)
    if type(e).__name__ == "NoArgsIsHelpError":
        # no arguments at all (or a group without its subcommand): the help is the answer
        if ctx is not None:
            text = ctx.get_help()  # Typer's rich help prints itself and returns ""
            if text:
                typer.echo(text)
        return 2
    message = _one_line(e.format_message())
    message += f" (try `{ctx.command_path if ctx is not None else _command_path(args)} --help`)"
    common.fail(message)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and returns the exit code (0 ok, 1 error, 2 usage error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    install_signal_handlers()  # SIGTERM/SIGINT flush every open ledger before the process ends
    try:
        # without standalone mode click returns a command's `typer.Exit(code)` instead of raising it
        rc = app(args=args, prog_name="llmbudget", standalone_mode=False)
        if isinstance(rc, int) and rc:
            return rc
    except LLMBudgetError as e:
        common.fail(str(e))
        return e.exit_code if isinstance(e, CommandNotRun) else 1
    except KeyboardInterrupt:
        common.fail("interrupted")
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except typer.Exit as e:
        return int(e.exit_code)
    except typer.Abort:
        common.fail("aborted")
        return 1
    except BrokenPipeError:
        # `llmbudget events | head`: the reader left; say nothing, and keep Python from
        # complaining about the unflushed stdout at exit
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process ends
        return 1
    except Exception as e:
        if isinstance(e, _USAGE_ERROR):
            return _usage_error(e, args)
        if isinstance(e, _CLICK_EXCEPTION):  # e.g. a file Click could not open
            common.fail(_one_line(e.format_message()))  # type: ignore[attr-defined]
            return int(getattr(e, "exit_code", 1))
        if _debug_wanted(args):
            traceback.print_exc()
        common.fail(f"unexpected {type(e).__name__}: {_one_line(str(e)) or 'no message'}")
        common.hint(
            f"this is a bug in llmbudget; run it again as `llmbudget --debug ...` (or with {ENV_DEBUG}=1) "
            "to see the traceback, and report it"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
