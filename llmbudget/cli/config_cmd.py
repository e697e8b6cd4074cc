"""CLI commands: `config check [FILE]` and `config show` (the effective configuration, secrets masked)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape

from ..config import Config, find_config_path, mask_url, parse_config
from ..errors import ConfigError
from . import common

#: a key whose name contains one of these holds a secret; its value prints as ***
SECRET_WORDS = ("key", "token", "secret", "password")
MASK = "***"

config_app = typer.Typer(help="Validate and show the configuration.", no_args_is_help=True)


def _is_secret_key(name: str) -> bool:
    lowered = name.lower()
    # `api_key_env: OPENAI_API_KEY` names a variable, not a secret: show it
    if lowered.endswith("_env"):
        return False
    return any(word in lowered for word in SECRET_WORDS)


def _mask_string(value: str) -> str:
    masked = mask_url(value)
    # secrets in query strings (?key=..., &token=...) and Slack-style webhook paths
    masked = re.sub(
        r"(?i)([?&](?:[a-z_]*key|[a-z_]*token|secret|password|sig)=)[^&#\s]*", rf"\1{MASK}", masked
    )
    masked = re.sub(r"(https?://hooks\.slack\.com/services/)\S+", rf"\1{MASK}", masked)
    return masked


def mask_secrets(data: Any, key: str | None = None) -> Any:
    """A copy of `data` with values under secret-looking keys replaced by ***, and URL credentials masked."""
    if key is not None and _is_secret_key(key) and data is not None and not isinstance(data, dict | list):
        return MASK
    if isinstance(data, dict):
        return {k: mask_secrets(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_secrets(v, key) for v in data]
    if isinstance(data, str):
        return _mask_string(data)
    return data


def _load(file: str | None, config: str | None) -> tuple[Config, Path | None]:
    path = find_config_path(file or config)
    if path is None:
        cfg, _ = parse_config("", None)
        return cfg, None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", path=str(path)) from e
    cfg, _ = parse_config(text, str(path))
    return cfg, path


@config_app.command("check")
def check(
    file: Annotated[
        str | None, typer.Argument(help="Config file to check (default: the one llmbudget would use).")
    ] = None,
    json_: common.JsonOpt = False,
    config: common.ConfigOpt = None,
) -> None:
    """Validate a config file; errors name the file, line and key."""
    cfg, path = _load(file, config)
    summary = {
        "ok": True,
        "path": str(path) if path else None,
        "backends": sorted(cfg.backends),
        "pricing_overrides": len(cfg.pricing),
        "timezone": cfg.zone().key,
    }
    if json_:
        common.print_json(summary)
        return
    if path is None:
        common.console.print(
            f"[green]ok[/]: no config file found; the defaults apply (timezone {summary['timezone']})",
            highlight=False,
        )
        return
    common.console.print(
        f"[green]ok[/]: {escape(str(path))} is valid ({len(cfg.backends)} backends, "
        f"{len(cfg.pricing)} price overrides, timezone {summary['timezone']})",
        highlight=False,
    )


@config_app.command("show")
def show(
    json_: common.JsonOpt = False,
    config: common.ConfigOpt = None,
) -> None:
    """Print the effective configuration as YAML (defaults filled in, secrets masked as ***)."""
    cfg, path = _load(None, config)
    data = mask_secrets(cfg.model_dump(mode="json", exclude={"source_path"}))
    if json_:
        common.print_json(data)
        return
    header = (
        f"# effective configuration from {path}\n"
        if path
        else "# effective configuration: defaults (no config file found)\n"
    )
    typer.echo(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


def register(app: typer.Typer) -> None:
    """Add the `config` command group to the app."""
    app.add_typer(config_app, name="config")
