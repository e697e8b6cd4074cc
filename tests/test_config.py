"""The config file: lookup order, defaults, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmbudget.config import find_config_path, load_config, mask_url, parse_config, resolve_db_url
from llmbudget.errors import ConfigError


def test_no_file_means_working_defaults() -> None:
    cfg = load_config()
    assert cfg.source_path is None
    assert {n: (b.kind, b.local) for n, b in cfg.backends.items()} == {
        "openai": ("openai", False),
        "anthropic": ("anthropic", False),
        "gemini": ("gemini", False),
        "local": ("openai", True),
    }
    assert cfg.server.port == 4141 and cfg.server.host == "127.0.0.1"


def test_explicit_empty_backends_turns_the_defaults_off() -> None:
    cfg, _ = parse_config("backends: {}\n", "c.yaml")
    assert cfg.backends == {}


def test_configured_backends_replace_the_defaults() -> None:
    cfg, _ = parse_config("backends:\n  mine: {kind: anthropic, base_url: 'http://127.0.0.1:9/'}\n")
    assert list(cfg.backends) == ["mine"] and cfg.backends["mine"].base_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "backends:\n  ok: {kind: openai, base_url: https://x}\n  bad:\n    kind: olama\n    base_url: http://y\n",
            "c.yaml:4: backends.bad.kind: Input should be 'openai', 'anthropic' or 'gemini' (got 'olama')",
        ),
        ("timezone: Mars/Base\n", "c.yaml:1: timezone: unknown timezone 'Mars/Base'"),
        (
            "storage:\n  url: x\n  nope: 1\n",
            "c.yaml:3: storage.nope: unknown key; valid keys: audit, audit_log",
        ),
        (
            "colour: red\n",
            "c.yaml:1: colour: unknown key; valid keys: alerts, attribution, backends, budgets",
        ),
        (
            "backends:\n  api: {kind: openai, base_url: https://x}\n",
            "c.yaml:2: backends.api: backend name 'api' is reserved",
        ),
        (
            "backends:\n  o: {kind: openai, base_url: ftp://x}\n",
            "c.yaml:2: backends.o.base_url: must be an http(s) URL",
        ),
        (
            "pricing:\n  - {model: a, model_regex: b, input_mtok: 1, output_mtok: 2}\n",
            "c.yaml:2: pricing.0: give exactly one of `model`",
        ),
        (
            "pricing:\n  - model_regex: '('\n    input_mtok: 1\n    output_mtok: 1\n",
            "c.yaml:2: pricing.0: model_regex is not a valid regular expression",
        ),
        ("server:\n  port: 70000\n", "c.yaml:2: server.port: Input should be less than or equal to 65535"),
        ("a: [\n", "c.yaml:2: YAML syntax error"),
        ("- just\n- a list\n", "c.yaml:1: the top level must be a mapping"),
    ],
)
def test_errors_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.yaml")
    assert str(e.value).startswith(expected), str(e.value)


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home_cfg = Path.home() / ".config" / "llmbudget" / "config.yaml"
    home_cfg.parent.mkdir(parents=True)
    home_cfg.write_text("timezone: UTC\n")
    assert find_config_path() == home_cfg
    local = tmp_path / "llmbudget.yaml"  # tests run in tmp_path
    local.write_text("timezone: Europe/Berlin\n")
    assert find_config_path() == Path("llmbudget.yaml")
    env = tmp_path / "env.yaml"
    env.write_text("timezone: Asia/Tokyo\n")
    monkeypatch.setenv("LLMBUDGET_CONFIG", str(env))
    assert load_config().timezone == "Asia/Tokyo"
    assert load_config(str(home_cfg)).timezone == "UTC"  # --config wins over everything


def test_missing_explicit_files_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("nope.yaml")
    monkeypatch.setenv("LLMBUDGET_CONFIG", "gone.yaml")
    with pytest.raises(ConfigError, match=r"\$LLMBUDGET_CONFIG"):
        load_config()


def test_database_url_order(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _ = parse_config("storage:\n  url: postgresql://cfg/db\n")
    assert resolve_db_url("sqlite:///cli.db", cfg) == "sqlite:///cli.db"
    monkeypatch.setenv("LLMBUDGET_DB", "sqlite:///env.db")
    assert resolve_db_url(None, cfg) == "sqlite:///env.db"
    monkeypatch.delenv("LLMBUDGET_DB")
    assert resolve_db_url(None, cfg) == "postgresql://cfg/db"
    default, _ = parse_config("")
    assert resolve_db_url(None, default).endswith("/data/llmbudget.db")  # LLMBUDGET_HOME in the tests


def test_mask_url_hides_passwords_only() -> None:
    assert mask_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
