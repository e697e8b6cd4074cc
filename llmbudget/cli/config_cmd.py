"""CLI commands: `config check [FILE]` and `config show` (the effective configuration, secrets masked)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, TypedDict

import typer
import yaml
from rich.markup import escape

from ..config import (
    ENV_CONFIG,
    ENV_DB,
    ENV_HOME,
    Config,
    data_dir,
    find_config_path,
    mask_url,
    parse_config,
    resolve_db_url,
)
from ..errors import ConfigError
from . import common

#: a key whose last word is one of these holds a secret; its value prints as ***. Whole words only:
#: `default_max_output_tokens` and `input_token_factor` are settings, not secrets.
SECRET_WORDS = frozenset(
    {
        "key",
        "keys",
        "apikey",
        "token",
        "secret",
        "secrets",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "credential",
        "credentials",
        "authorization",
        "auth",
        "cookie",
        "signature",
    }
)
MASK = "***"
#: values that are provider keys whatever their key is called (OpenAI/Anthropic `sk-`, our `llmb-`,
#: Google `AIza`, Slack `xox?-`, GitHub `ghp_`)
_KEY_VALUE = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}|llmb-[A-Za-z0-9_-]{8,}|AIza[0-9A-Za-z_-]{30,}|xox[abpr]-[0-9A-Za-z-]{10,}|ghp_[0-9A-Za-z]{20,})"
)

config_app = typer.Typer(help="Validate and show the configuration.", no_args_is_help=True)


def _is_secret_key(name: str) -> bool:
    lowered = name.lower()
    # `api_key_env: OPENAI_API_KEY` names a variable, not a secret: show it
    if lowered.endswith("_env"):
        return False
    words = [w for w in re.split(r"[^a-z0-9]+", lowered) if w]
    return bool(words) and (words[-1] in SECRET_WORDS or "".join(words) in SECRET_WORDS)


def _mask_string(value: str) -> str:
    masked = mask_url(value)
    # secrets in query strings (?key=..., &token=...) and Slack-style webhook paths
    masked = re.sub(
        r"(?i)([?&](?:[a-z_]*key|[a-z_]*token|secret|password|sig)=)[^&#\s]*", rf"\1{MASK}", masked
    )
    masked = re.sub(r"(https?://hooks\.slack\.com/services/)\S+", rf"\1{MASK}", masked)
    return _KEY_VALUE.sub(MASK, masked)


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


def _config_source(config: str | None, path: Path | None) -> str:
    if path is None:
        return "none found: the defaults apply"
    if config:
        return "--config"
    if os.environ.get(ENV_CONFIG):
        return f"${ENV_CONFIG}"
    return "./llmbudget.yaml" if path == Path("llmbudget.yaml") else "~/.config/llmbudget/config.yaml"


def _zone_source(cfg: Config) -> str:
    if cfg.timezone:
        return "timezone: in the config"
    if os.environ.get("TZ"):
        return "the system's: $TZ"
    if "zoneinfo/" in os.path.realpath("/etc/localtime"):
        return "the system's: /etc/localtime"
    return "no time zone configured or found on the system"


def _db_source(db: str | None, cfg: Config) -> str:
    if db:
        return "--db"
    if os.environ.get(ENV_DB):
        return f"${ENV_DB}"
    if cfg.storage.url:
        return "storage.url in the config"
    return "the default"


def _data_dir_source() -> str:
    if os.environ.get(ENV_HOME):
        return f"${ENV_HOME}"
    if os.environ.get("XDG_DATA_HOME"):
        return "$XDG_DATA_HOME/llmbudget"
    return "the default"


#: one value in effect and where it came from
InEffect = TypedDict("InEffect", {"value": str | None, "from": str})


def in_effect(cfg: Config, *, config: str | None, path: Path | None, db: str | None) -> dict[str, InEffect]:
    """The values llmbudget will use after every lookup order, each with where it came from (secrets masked)."""
    return {
        "config_file": {"value": str(path) if path else None, "from": _config_source(config, path)},
        "timezone": {"value": cfg.zone().key, "from": _zone_source(cfg)},
        "storage_url": {"value": _mask_string(resolve_db_url(db, cfg)), "from": _db_source(db, cfg)},
        "data_dir": {"value": str(data_dir()), "from": _data_dir_source()},
    }


@config_app.command("show")
def show(
    json_: common.JsonOpt = False,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
) -> None:
    """Print the effective configuration as YAML: defaults filled in, the time zone and database in effect, secrets masked as ***."""
    cfg, path = _load(None, config)
    effect = in_effect(cfg, config=config, path=path, db=db)
    data = mask_secrets(cfg.model_dump(mode="json", exclude={"source_path"}))
    # the values in effect, not the unset ones: a null timezone means the system's, a null url the default
    data["timezone"] = effect["timezone"]["value"]
    data["storage"]["url"] = effect["storage_url"]["value"]
    if json_:
        common.print_json({**data, "in_effect": effect})
        return
    header = (
        f"# effective configuration from {path}\n"
        if path
        else "# effective configuration: defaults (no config file found)\n"
    )
    header += "".join(
        f"# {name.replace('_', ' ')}: {item['value']} ({item['from']})\n"
        for name, item in effect.items()
        if name != "config_file"
    )
    typer.echo(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


def register(app: typer.Typer) -> None:
    """Add the `config` command group to the app."""
    app.add_typer(config_app, name="config")
