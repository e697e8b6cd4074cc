"""One YAML file, validated with pydantic; every error names the file, line and key.

Lookup order: `--config`, `$LLMBUDGET_CONFIG`, `./llmbudget.yaml`,
`~/.config/llmbudget/config.yaml`; no file at all means defaults.
"""

from __future__ import annotations

import os
import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from .attribution import AttributionConfig
from .budget.config import AlertsConfig, BudgetsConfig, validate_budget_section
from .errors import ConfigError
from .quota.settings import ProviderList, QuotaSettings

ENV_CONFIG = "LLMBUDGET_CONFIG"
ENV_DB = "LLMBUDGET_DB"
ENV_HOME = "LLMBUDGET_HOME"  # data directory override (tests point it at a temp dir)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class BackendConfig(_Model):
    """One upstream the proxy serves under `/{name}/...`."""

    kind: Literal["openai", "anthropic", "gemini"]
    base_url: str
    api_key_env: str | None = None
    local: bool = False
    #: provider id used for pricing; defaults from kind/base_url (openai, anthropic, google, xai, ...)
    provider: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        return v.rstrip("/")


class PriceOverride(_Model):
    """A user price: matches a model by exact name (`model`) or regular expression (`model_regex`)."""

    model: str | None = None
    model_regex: str | None = None
    provider: str | None = None
    input_mtok: Decimal = Field(ge=0)
    output_mtok: Decimal = Field(ge=0)
    cache_read_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_mtok: Decimal | None = Field(default=None, ge=0)
    #: cache writes with a one-hour TTL (Anthropic); without it they cost cache_write_mtok
    cache_write_1h_mtok: Decimal | None = Field(default=None, ge=0)
    effective_from: date | None = None

    @model_validator(mode="after")
    def _one_matcher(self) -> PriceOverride:
        if (self.model is None) == (self.model_regex is None):
            raise ValueError("give exactly one of `model` (exact name) or `model_regex`")
        if self.model_regex is not None:
            try:
                re.compile(self.model_regex)
            except re.error as e:
                raise ValueError(f"model_regex is not a valid regular expression: {e}") from e
        return self


class StorageConfig(_Model):
    url: str | None = None
    #: JSONL audit log of every accepted event; default next to the SQLite database
    audit_log: str | None = None
    #: set false to turn the audit log off
    audit: bool = True
    batch_size: int = Field(default=2000, ge=1)
    flush_interval_s: float = Field(default=0.2, gt=0)
    #: write: each accepted event's audit line is written before its answer ends (survives kill -9);
    #: fsync: plus a group-committed fsync before the answer ends (survives a power cut)
    durability: Literal["write", "fsync"] = "write"
    #: PostgreSQL connections per process, for the ledger and for the budget counters each
    pool_size: int = Field(default=4, ge=1, le=200)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=4141, ge=1, le=65535)
    #: names the environment variable holding the admin token; required off loopback
    admin_token_env: str | None = None
    #: a proxied request body above this many megabytes is refused (413) before it is held in memory
    max_body_mb: float = Field(default=32.0, gt=0)
    #: extra Host names the server answers to (`llm.example.com`, `*.example.com`; `*` turns the check off)
    allowed_hosts: list[str] = Field(default_factory=list)
    #: reports (`/api/costs`, `/api/events`, `/api/sessions`) running at once, in threads beside the proxy
    report_concurrency: int = Field(default=2, ge=1, le=64)
    #: how long a report waits for a turn before it is answered 503 with Retry-After
    report_wait_s: float = Field(default=10.0, ge=0)


class DashboardConfig(_Model):
    """The web dashboard served beside the proxy."""

    #: a session with no call for this long counts as ended (clients can also end one explicitly)
    session_idle_minutes: float = Field(default=30, gt=0)


class LiveConfig(_Model):
    """Live updates of open dashboards."""

    #: Redis pub/sub for live updates across replicas; default `budgets.redis_url`; none: in-process only
    redis_url: str | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got {v!r}")
        return v


class MetricsConfig(_Model):
    """`/metrics` (Prometheus)."""

    #: agents with their own `agent` label on the cost series; later ones are counted as `other`
    max_agents: int = Field(default=20, ge=0, le=10_000)


class OtelConfig(_Model):
    """OpenTelemetry export over OTLP/HTTP (needs `pip install 'llmbudget[otel]'`)."""

    #: collector base URL (`http://127.0.0.1:4318`); default `$OTEL_EXPORTER_OTLP_ENDPOINT`; neither: off
    endpoint: str | None = None
    #: the `service.name` resource attribute
    service_name: str = Field(default="llmbudget", min_length=1, max_length=200)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must start with http:// or https://, got {v!r}")
        return v


#: first path segments llmbudget serves itself, so no backend may take them
RESERVED_PREFIXES = frozenset({"api", "healthz", "metrics", "static", "login"})


def default_backends() -> dict[str, BackendConfig]:
    """The backends served when the config has no `backends:` key: the three public APIs and a local Ollama.

    So `llmbudget serve` with no config at all is already a working proxy; `backends: {}` turns them off.
    """
    return {
        "openai": BackendConfig(kind="openai", base_url="https://api.openai.com"),
        "anthropic": BackendConfig(kind="anthropic", base_url="https://api.anthropic.com"),
        "gemini": BackendConfig(kind="gemini", base_url="https://generativelanguage.googleapis.com"),
        "local": BackendConfig(kind="openai", base_url="http://127.0.0.1:11434", local=True),
    }


class Config(_Model):
    """The effective configuration."""

    timezone: str | None = None
    backends: dict[str, BackendConfig] = Field(default_factory=default_backends)
    pricing: list[PriceOverride] = Field(default_factory=list)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    budgets: BudgetsConfig | None = None
    alerts: AlertsConfig | None = None
    providers: ProviderList = Field(default_factory=list)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    attribution: AttributionConfig = Field(default_factory=AttributionConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    otel: OtelConfig = Field(default_factory=OtelConfig)

    #: where the file was read from (None: defaults)
    source_path: str | None = Field(default=None, exclude=True)

    @field_validator("storage", mode="before")
    @classmethod
    def _storage_url(cls, v: Any) -> Any:
        # `storage: sqlite:///path` or `storage: postgresql://...` is short for `storage: {url: ...}`
        if isinstance(v, str):
            return {"url": v}
        if v is None:  # `storage:` with nothing under it: the defaults
            return {}
        if not isinstance(v, dict | StorageConfig):
            raise ValueError(
                "must be a database URL (storage: sqlite:///path or postgresql://...) or a mapping such as "
                "storage: {url: ...}"
            )
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError) as e:
                raise ValueError(f"unknown timezone {v!r}; use an IANA name such as Europe/Berlin") from e
        return v

    def zone(self) -> ZoneInfo:
        """The configured timezone, else the system's."""
        return get_zone(self.timezone)


def get_zone(name: str | None) -> ZoneInfo:
    """An IANA zone by name; None means the system zone ($TZ, /etc/localtime), falling back to UTC."""
    if name:
        return ZoneInfo(name)
    tz = os.environ.get("TZ")
    if tz:
        try:
            return ZoneInfo(tz.lstrip(":"))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        target = os.path.realpath("/etc/localtime")
        marker = "zoneinfo/"
        if marker in target:
            return ZoneInfo(target.split(marker, 1)[1])
    except (OSError, ZoneInfoNotFoundError, ValueError):
        pass
    return ZoneInfo("UTC")


# ---------------------------------------------------------------- YAML with line numbers


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key and sequence item."""


def _load_with_lines(text: str, path: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    lines: dict[tuple[Any, ...], int] = {}
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"YAML syntax error: {problem}", path=path, line=line) from e
    if node is None:
        return {}, lines

    def walk(n: yaml.Node, loc: tuple[Any, ...]) -> None:
        lines.setdefault(loc, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = k.value
                lines[(*loc, key)] = k.start_mark.line + 1
                walk(v, (*loc, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[(*loc, i)] = item.start_mark.line + 1
                walk(item, (*loc, i))

    walk(node, ())
    data = yaml.load(text, Loader=yaml.SafeLoader)
    return data, lines


class LineMap:
    """Maps a key path in the config to its line in the file, for error messages."""

    def __init__(self, path: str | None, lines: dict[tuple[Any, ...], int]) -> None:
        self.path = path
        self.lines = lines

    def line(self, loc: tuple[Any, ...]) -> int | None:
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get(())

    def error(self, loc: tuple[Any, ...], message: str) -> ConfigError:
        """A ConfigError naming file, line and dotted key for `loc`."""
        key = ".".join(str(p) for p in loc) if loc else None
        return ConfigError(message, path=self.path, line=self.line(loc), key=key)


def _pydantic_to_config_error(e: PydanticValidationError, lm: LineMap) -> ConfigError:
    err = e.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        parent = loc[:-1]
        model: Any = Config
        for part in parent:
            field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
            ann = field.annotation if field is not None else None
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None:
                break
        valid = sorted(model.model_fields) if model is not None else []
        valid = [v for v in valid if v != "source_path"]
        msg = "unknown key" + (f"; valid keys: {', '.join(valid)}" if valid else "")
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif "input" in err and err["type"] not in ("missing",):
        msg = f"{msg} (got {err['input']!r})"
    return lm.error(loc, msg)


def parse_config(text: str, path: str | None = None) -> tuple[Config, LineMap]:
    """Parse and validate config text; ConfigError names file, line and key."""
    data, lines = _load_with_lines(text, path or "<config>")
    lm = LineMap(path or "<config>", lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys", path=lm.path, line=1)
    try:
        cfg = Config.model_validate(data)
    except PydanticValidationError as e:
        raise _pydantic_to_config_error(e, lm) from None
    cfg.source_path = path
    _check_backend_names(cfg, lm)
    _validate_sections(cfg, lm)
    return cfg, lm


#: section validators registered by feature modules (budgets, providers, alerts): fn(cfg, linemap)
SECTION_VALIDATORS: list[Any] = [validate_budget_section]


def _check_backend_names(cfg: Config, lm: LineMap) -> None:
    """Backend names become URL prefixes: plain characters, and none of llmbudget's own routes."""
    for name in cfg.backends:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise lm.error(
                ("backends", name), f"backend name {name!r} must be letters, digits, '-', '_' or '.'"
            )
        if name in RESERVED_PREFIXES:
            raise lm.error(
                ("backends", name), f"backend name {name!r} is reserved for llmbudget's own routes"
            )


def _validate_sections(cfg: Config, lm: LineMap) -> None:
    for fn in SECTION_VALIDATORS:
        fn(cfg, lm)


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to use, by the documented lookup order; None when there is none."""
    if explicit:
        p = Path(explicit)
        if not p.exists():
            raise ConfigError("config file not found; check the --config path", path=str(p))
        return p
    env = os.environ.get(ENV_CONFIG)
    if env:
        p = Path(env)
        if not p.exists():
            raise ConfigError(f"config file named by ${ENV_CONFIG} not found", path=str(p))
        return p
    for cand in (Path("llmbudget.yaml"), Path.home() / ".config" / "llmbudget" / "config.yaml"):
        if cand.exists():
            return cand
    return None


_cache: dict[tuple[str, float], tuple[Config, LineMap]] = {}


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find, read and validate the configuration (defaults when no file exists)."""
    path = find_config_path(explicit)
    if path is None:
        cfg, _ = parse_config("", None)
        return cfg
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", path=str(path)) from e
    cfg, _ = parse_config(text, str(path))
    return cfg


def data_dir() -> Path:
    """Where llmbudget keeps its data: $LLMBUDGET_HOME, else $XDG_DATA_HOME/llmbudget, else ~/.local/share/llmbudget."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME])
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "llmbudget"


def default_db_url() -> str:
    return f"sqlite:///{data_dir() / 'llmbudget.db'}"


def resolve_db_url(cli_db: str | None, cfg: Config) -> str:
    """The database URL: --db, $LLMBUDGET_DB, `storage.url`, then the SQLite default."""
    return cli_db or os.environ.get(ENV_DB) or cfg.storage.url or default_db_url()


def mask_url(url: str) -> str:
    """A database URL with its password replaced by ***."""
    # the user may be empty (`redis://:secret@host`)
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
