"""`config show`: secrets masked and nothing else, the values in effect with where they came from;
`storage:` as a plain URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmbudget.cli import main
from llmbudget.cli.config_cmd import mask_secrets
from llmbudget.config import parse_config
from llmbudget.errors import ConfigError


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("api_key", True),
        ("x-api-key", True),
        ("Authorization", True),
        ("admin_token", True),
        ("client_secret", True),
        ("db_password", True),
        ("private_key", True),
        ("keys", True),
        ("default_max_output_tokens", False),
        ("input_token_factor", False),
        ("limit_tokens", False),
        ("token_budget", False),
        ("key_valid", False),
        ("api_key_env", False),
        ("admin_token_env", False),
        ("keyword", False),
    ],
)
def test_only_secrets_are_masked(key: str, secret: bool) -> None:
    assert (mask_secrets({key: 42})[key] == "***") is secret


def test_secret_values_are_masked_whatever_their_key() -> None:
    masked = mask_secrets(
        {
            "note": "use sk-ant-api03-abcdefghijklmnop1234 for this",
            "redis_url": "redis://:hunter2@cache:6379/0",
            "url": "postgresql://bob:hunter2@db/llm",
        }
    )
    assert masked["note"] == "use *** for this"
    assert masked["redis_url"] == "redis://:***@cache:6379/0"
    assert masked["url"] == "postgresql://bob:***@db/llm"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    p = tmp_path / "team.yaml"
    p.write_text(
        "timezone: Europe/Berlin\n"
        "storage: postgresql://bob:hunter2@db.internal:5432/llm\n"  # the plain-URL form
        "budgets:\n  daily_limit_usd: 5\n  default_max_output_tokens: 4096\n  input_token_factor: 2.5\n"
    )
    return p


def test_config_show_prints_settings_and_hides_passwords(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "config", "show", "--config", str(cfg))
    assert code == 0 and "hunter2" not in out
    data: dict[str, Any] = yaml.safe_load(out)
    assert data["budgets"]["default_max_output_tokens"] == 4096
    assert data["budgets"]["input_token_factor"] == 2.5
    assert data["storage"]["url"] == "postgresql://bob:***@db.internal:5432/llm"
    assert data["timezone"] == "Europe/Berlin"
    assert "# timezone: Europe/Berlin (timezone: in the config)" in out
    assert "# storage url: postgresql://bob:***@db.internal:5432/llm (storage.url in the config)" in out


def test_config_show_gives_the_values_in_effect_and_where_they_come_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    # no config file: the defaults, the system's zone, the default database in the data directory
    code, out, _ = run(capsys, "config", "show", "--json")
    assert code == 0
    data = json.loads(out)
    eff = data["in_effect"]
    assert data["timezone"] == eff["timezone"]["value"] == "America/New_York"
    assert eff["timezone"]["from"] == "the system's: $TZ"
    assert eff["config_file"] == {"value": None, "from": "none found: the defaults apply"}
    assert eff["data_dir"] == {"value": str(tmp_path / "data"), "from": "$LLMBUDGET_HOME"}
    default = f"sqlite:///{tmp_path / 'data' / 'llmbudget.db'}"
    assert data["storage"]["url"] == eff["storage_url"]["value"] == default
    assert eff["storage_url"]["from"] == "the default"
    # $LLMBUDGET_DB beats the config, --db beats both
    monkeypatch.setenv("LLMBUDGET_DB", "postgresql://ann:pw@h/x")
    eff = json.loads(run(capsys, "config", "show", "--json")[1])["in_effect"]
    assert eff["storage_url"] == {"value": "postgresql://ann:***@h/x", "from": "$LLMBUDGET_DB"}
    eff = json.loads(run(capsys, "config", "show", "--json", "--db", "/tmp/other.db")[1])["in_effect"]
    assert eff["storage_url"] == {"value": "/tmp/other.db", "from": "--db"}
    code, out, _ = run(capsys, "config", "show")
    assert (
        "# storage url: /tmp/other.db" not in out
        and "# storage url: postgresql://ann:***@h/x ($LLMBUDGET_DB)" in out
    )


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("storage: sqlite:///var/lib/llmbudget/l.db\n", "sqlite:///var/lib/llmbudget/l.db"),
        ("storage: /srv/ledger.db\n", "/srv/ledger.db"),
        ("storage: {url: 'postgresql://h/db'}\n", "postgresql://h/db"),
        ("storage:\n  url: x.db\n  batch_size: 10\n", "x.db"),
        ("storage:\n", None),
    ],
)
def test_storage_takes_a_plain_url_or_a_mapping(text: str, url: str | None) -> None:
    cfg, _ = parse_config(text, "c.yaml")
    assert cfg.storage.url == url


def test_a_storage_value_of_the_wrong_kind_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"c.yaml:2: storage: must be a database URL"):
        parse_config("timezone: UTC\nstorage: 5\n", "c.yaml")


def test_the_plain_storage_url_is_the_ledger_commands_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime

    from llmbudget.events import UsageEvent
    from llmbudget.store import open_ledger

    url = f"sqlite:///{tmp_path / 'plain.db'}"
    with open_ledger(url) as led:
        led.record(
            UsageEvent(backend="local", model="m", agent="from-plain-url", timestamp=datetime.now(UTC))
        )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"storage: {url}\n")
    code, out, err = run(capsys, "events", "--json", "--config", str(cfg))
    assert code == 0, err
    assert [e["agent"] for e in json.loads(out)["events"]] == ["from-plain-url"]
