"""The docs cover what users can type: every CLI command and option, every config key.

Generic on purpose: it walks whatever is registered on the Typer app and whatever fields the
`Config` model (recursively) has, so a new command, option or key fails here until the README
(or docs/config.md, for config keys) mentions it.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer.main
from pydantic import BaseModel

from llmbudget.cli import app
from llmbudget.config import Config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIG_DOC = ROOT / "docs" / "config.md"


# Typer vendors its own copy of click, so commands and options are recognised by shape, not class.


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if path:
        yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            yield from _commands(sub, (*path, name))


def _long_options(cmd: Any) -> list[str]:
    out = []
    for p in cmd.params:
        if getattr(p, "param_type_name", "") == "option" and not getattr(p, "hidden", False):
            out += [o for o in (*p.opts, *p.secondary_opts) if o.startswith("--") and o != "--help"]
    return out


def test_the_walk_sees_the_command_tree() -> None:
    root = typer.main.get_command(app)
    found = {" ".join(path): cmd for path, cmd in _commands(root)}
    assert {"costs", "events", "sessions", "export", "config check", "config show"} <= set(found)
    assert {"--since", "--json", "--csv", "--db", "--config"} <= set(_long_options(found["costs"]))


def _mentioned(word: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def test_every_command_is_in_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    missing = [
        f"llmbudget {' '.join(path)}"
        for path, _ in _commands(root)
        if not _mentioned(f"llmbudget {' '.join(path)}", readme)
    ]
    assert not missing, f"commands not shown in README.md: {', '.join(missing)}"


def test_every_option_is_in_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    missing = sorted(
        {
            f"{' '.join(path)} {opt}"
            for path, cmd in _commands(root)
            for opt in _long_options(cmd)
            if not _mentioned(opt, readme)
        }
    )
    assert not missing, "options not mentioned in README.md:\n  " + "\n  ".join(missing)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def config_keys(
    model: type[BaseModel] = Config, prefix: str = "", seen: set[type] | None = None
) -> list[str]:
    """Every key a config file may hold, dotted (`storage.url`), recursing into nested models."""
    seen = seen if seen is not None else set()
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = field.alias or name
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        for sub in _models_in(field.annotation):
            if sub not in seen:
                keys += config_keys(sub, f"{dotted}.", seen | {sub})
    return keys


def test_config_key_walk_finds_nested_keys() -> None:
    keys = config_keys()
    assert "storage.url" in keys and "backends.kind" in keys and "server.port" in keys
    assert "source_path" not in keys


def test_every_config_key_is_documented() -> None:
    text = README.read_text(encoding="utf-8")
    if CONFIG_DOC.exists():
        text += CONFIG_DOC.read_text(encoding="utf-8")
    missing = [k for k in config_keys() if not _mentioned(k.rsplit(".", 1)[-1], text)]
    assert not missing, "config keys not documented in README.md or docs/config.md: " + ", ".join(missing)
