"""`llmbudget providers import pi`: quota accounts from a pi agent's models.json, keys never copied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmbudget.cli import app, main
from llmbudget.config import parse_config

SECRET = "sk-live-THIS-MUST-NEVER-BE-PRINTED-1234567890"

MODELS = {
    "providers": {
        "openrouter": {
            "baseUrl": "https://openrouter.ai/api/v1",
            "api": "openai-completions",
            "apiKey": "$OPENROUTER_API_KEY",
            "models": [{"id": "anthropic/claude-sonnet-4.5", "name": "Sonnet", "contextWindow": 200000}],
        },
        "my api": {
            "baseUrl": "https://api.example.com/v1",
            "api": "openai-responses",
            "apiKey": "${EXAMPLE_KEY}",
            "models": [{"id": "ex-large"}],
        },
        "claude-direct": {
            "baseUrl": "https://api.anthropic.com",
            "api": "anthropic-messages",
            "apiKey": "ANTHROPIC_API_KEY",
            "models": [{"id": "claude-haiku-4-5"}],
        },
        "gem": {
            "baseUrl": "https://generativelanguage.googleapis.com/v1beta",
            "api": "google-generative-ai",
            "apiKey": SECRET,
            "models": [{"id": "gemini-2.5-flash"}],
        },
        "grok": {"baseUrl": "https://api.x.ai/v1", "api": "openai-completions", "apiKey": "!pass show xai"},
        "ollama": {"baseUrl": "http://localhost:11434/v1", "api": "openai-completions", "apiKey": "ollama"},
        "bedrock": {"api": "bedrock-converse-stream", "models": [{"id": "x"}]},
    }
}


def _invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def test_pi_models_json_becomes_providers(tmp_path: Path) -> None:
    f = tmp_path / "models.json"
    f.write_text(json.dumps(MODELS))
    code, out = _invoke("providers", "import", "pi", str(f))
    assert code == 0, out
    assert SECRET not in out and "pass show" not in out
    cfg, _ = parse_config(out, "pasted.yaml")  # valid as it stands
    got = {p.name: (p.kind, p.base_url, p.api_key_env, p.model) for p in cfg.providers}
    assert got == {
        "openrouter": (
            "openrouter",
            "https://openrouter.ai/api/v1",
            "OPENROUTER_API_KEY",
            "anthropic/claude-sonnet-4.5",
        ),
        "my-api": ("openai", "https://api.example.com/v1", "EXAMPLE_KEY", "ex-large"),
        "claude-direct": (
            "anthropic-api",
            "https://api.anthropic.com",
            "ANTHROPIC_API_KEY",
            "claude-haiku-4-5",
        ),
        "gem": ("gemini", "https://generativelanguage.googleapis.com/v1beta", None, "gemini-2.5-flash"),
        "grok": ("xai", "https://api.x.ai/v1", None, None),
    }
    assert "# gem: models.json holds this key literally; move it to an environment variable" in out
    assert "# grok: pi runs a command for this key" in out
    assert "# ollama: a local server (localhost) has no quota to watch" in out
    assert "# bedrock: api 'bedrock-converse-stream' is not one llmbudget can probe" in out


def test_default_path_json_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = Path.home() / ".pi" / "agent"
    agent.mkdir(parents=True)
    (agent / "models.json").write_text(json.dumps({"providers": {"gem": MODELS["providers"]["gem"]}}))
    code, out = _invoke("providers", "import", "pi", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["providers"] == [
        {
            "name": "gem",
            "kind": "gemini",
            "base_url": "https://generativelanguage.googleapis.com/v1beta",
            "model": "gemini-2.5-flash",
        }
    ]
    assert SECRET not in out
    monkeypatch.setenv("PI_CODING_AGENT_DIR", str(tmp_path))
    (tmp_path / "models.json").write_text("{not json")
    assert main(["providers", "import", "pi"]) == 1
    err = capsys.readouterr().err
    assert "models.json: not valid JSON" in err and "Traceback" not in err
    assert main(["providers", "import", "pi", str(tmp_path / "nope.json")]) == 1
    assert "nope.json: no such file" in capsys.readouterr().err
