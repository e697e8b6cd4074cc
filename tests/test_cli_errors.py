"""The CLI never shows a traceback: every registered command, walked from the app itself.

Usage errors are one line and exit 2; library errors one red line and exit 1; an unexpected
exception one red line plus a hint and exit 1, its traceback only with --debug / LLMBUDGET_DEBUG.
Commands added later (any module's `register`) are walked too, with no change here.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

import pytest
from typer.main import get_command

from llmbudget import __version__
from llmbudget.cli import app, main


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    subs = getattr(cmd, "commands", None)
    if subs is not None:
        yield path, cmd
        for name, sub in subs.items():
            yield from _walk(sub, (*path, name))
    else:
        yield path, cmd


ALL = list(_walk(get_command(app)))
GROUPS = [p for p, c in ALL if getattr(c, "commands", None) is not None and p]
LEAVES = [p for p, c in ALL if getattr(c, "commands", None) is None]


def _numeric(param: Any) -> bool:
    """Whether an option takes a number (Typer 0.29 keeps the annotation; Click keeps a ParamType)."""
    td = getattr(param, "type_descriptor", None)
    ann = getattr(td, "annotation", None)
    if ann is not None:
        kinds = typing.get_args(ann) or (ann,)
        return any(k in (int, float) for k in kinds) and bool not in kinds
    return getattr(getattr(param, "type", None), "name", "") in ("integer", "float")


def _params(path: tuple[str, ...]) -> list[Any]:
    return list(dict(ALL)[path].params)


NUMERIC = [
    (p, opt.opts[0])
    for p in LEAVES
    for opt in _params(p)
    if opt.param_type_name == "option" and not opt.is_flag and _numeric(opt)
]
WITH_REQUIRED_ARG = [
    p for p in LEAVES if any(x.param_type_name == "argument" and x.required for x in _params(p))
]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _one_usage_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], err


def test_the_walk_sees_the_known_commands() -> None:
    names = {" ".join(p) for p in LEAVES}
    assert {"costs", "events", "config show", "db migrate", "agents pause", "serve"} <= names
    assert len(NUMERIC) >= 5 and WITH_REQUIRED_ARG


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_command_refuses_an_unknown_option_in_one_line(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *path, "--no-such-option")
    assert code == 2
    _one_usage_line(err, "No such option: --no-such-option", f"`llmbudget {' '.join(path)} --help`")


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *path, "--help")
    assert code == 0 and "Usage" in out and "Traceback" not in out + err


@pytest.mark.parametrize(("path", "opt"), NUMERIC, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_a_word_where_a_number_goes_is_one_line(
    path: tuple[str, ...], opt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *path, opt, "abc")
    assert code == 2
    _one_usage_line(err)


@pytest.mark.parametrize("path", WITH_REQUIRED_ARG, ids=" ".join)
def test_a_missing_argument_is_one_line(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *path)
    assert code == 2
    _one_usage_line(err, "Missing argument")


@pytest.mark.parametrize("path", [(), *GROUPS], ids=lambda p: " ".join(p) or "llmbudget")
def test_a_group_without_its_command_prints_help_and_exits_2(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *path)
    assert code == 2
    assert "Traceback" not in out + err
    assert "Commands" in out


def test_an_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "cots")
    assert code == 2
    _one_usage_line(err, "No such command 'cots'", "`llmbudget --help`")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"llmbudget {__version__}"


@pytest.fixture
def crashing_command() -> Iterator[None]:
    """A command whose library code fails unexpectedly, registered like any other, then removed."""

    @app.command("crash-for-test")
    def crash() -> None:
        {}["missing"]

    try:
        yield
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "crash-for-test"]


@pytest.mark.usefixtures("crashing_command")
def test_an_unexpected_error_is_one_red_line_and_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "crash-for-test")
    assert code == 1 and out == ""
    assert "Traceback" not in err
    first, second = err.strip().splitlines()
    assert first == "error: unexpected KeyError: 'missing'"
    assert second.startswith("hint: ") and "--debug" in second


@pytest.mark.usefixtures("crashing_command")
@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(
    how: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "env":
        monkeypatch.setenv("LLMBUDGET_DEBUG", "1")
        args: tuple[str, ...] = ("crash-for-test",)
    else:
        args = ("--debug", "crash-for-test")
    code, _, err = run(capsys, *args)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "KeyError" in err
    assert "error: unexpected KeyError" in err


def test_rich_markup_in_an_error_is_printed_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    from llmbudget.cli import common

    capsys.readouterr()
    common.fail("PostgreSQL support needs psycopg: pip install 'llmbudget[postgres]' [bold]x[/]")
    err = capsys.readouterr().err
    assert "pip install 'llmbudget[postgres]' [bold]x[/]" in err


VALUE_OPTS = [
    (p, opt.opts[0])
    for p in LEAVES
    for opt in _params(p)[:1] + [x for x in _params(p) if x.opts and x.opts[0] == "--db"]
    if opt.param_type_name == "option" and not opt.is_flag and opt.opts[0].startswith("--")
]


@pytest.mark.parametrize(
    ("path", "opt"), VALUE_OPTS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v
)
def test_an_option_without_its_value_is_one_line(
    path: tuple[str, ...], opt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *path, opt)
    assert code == 2
    _one_usage_line(err, f"'{opt}' requires an argument", f"`llmbudget {' '.join(path)} --help`")
