"""`llmbudget run -- CMD`: a script using the official SDKs, run as its own process, metered and capped.

`llmbudget run` runs as a subprocess (this tree's `llmbudget`), its child is a Python script
using the `openai` and `anthropic` SDKs against the fake upstreams; what it recorded is read
from the SQLite ledger afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.servers import free_port, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget import runner
from llmbudget.config import Config, parse_config
from llmbudget.store import open_ledger

LLMBUDGET = str(Path(sys.executable).with_name("llmbudget"))

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import anthropic, openai

    headers = {}
    if os.environ.get("SEND_SESSION"):  # what a wrap()-less script does with a running server
        headers = {"X-LLMBudget-Session": os.environ["LLMBUDGET_SESSION"]}
    refused = 0
    with openai.OpenAI(api_key="sk-test", default_headers=headers, max_retries=0) as o:
        for _ in range(int(os.environ.get("CALLS", "1"))):
            try:
                o.chat.completions.create(model="gpt-4o-mini", max_tokens=50,
                                          messages=[{"role": "user", "content": "hi"}])
            except openai.RateLimitError as e:
                refused += 1
                print("refused:", e.message, file=sys.stderr)
    with anthropic.Anthropic(api_key="sk-ant-test", default_headers=headers, max_retries=0) as a:
        try:
            a.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                              messages=[{"role": "user", "content": "hi"}])
        except anthropic.RateLimitError:
            refused += 1
    print(os.environ["OPENAI_BASE_URL"], os.environ["ANTHROPIC_BASE_URL"], refused)
    if os.environ.get("SLEEP"):
        import time
        print("sleeping", flush=True)
        time.sleep(float(os.environ["SLEEP"]))
    sys.exit(int(os.environ.get("EXIT", "0")))
    """
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def config_text(fake_url: str) -> str:
    return textwrap.dedent(
        f"""
        backends:
          openai: {{kind: openai, base_url: "{fake_url}", provider: openai}}
          anthropic: {{kind: anthropic, base_url: "{fake_url}", provider: anthropic}}
          gemini: {{kind: gemini, base_url: "{fake_url}", provider: google}}
        server:
          port: {free_port()}
        """
    )


@pytest.fixture
def setup(tmp_path: Path, fake: FakeUpstream) -> dict[str, Any]:
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text(config_text(fake.url))
    script = tmp_path / "agent.py"
    script.write_text(SCRIPT)
    return {"config": str(cfg), "db": str(tmp_path / "ledger.db"), "script": str(script)}


def llmbudget_run(
    setup: dict[str, Any], *opts: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            LLMBUDGET,
            "run",
            "--config",
            setup["config"],
            "--db",
            setup["db"],
            "--json",
            *opts,
            "--",
            sys.executable,
            setup["script"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def summary_of(stderr: str) -> dict[str, Any]:
    line = [ln for ln in stderr.splitlines() if ln.startswith('{"session"')][-1]
    return json.loads(line)


def test_run_meters_the_commands_calls_and_keeps_its_exit_code(setup: dict[str, Any]) -> None:
    r = llmbudget_run(setup, "--agent", "fixer", "--session", "s-run-1", env={"EXIT": "3"})
    assert r.returncode == 3, r.stderr
    base_openai, base_anthropic, refused = r.stdout.split()
    assert base_openai.startswith("http://127.0.0.1:") and base_openai.endswith("/openai/v1")
    assert base_anthropic.endswith("/anthropic") and refused == "0"
    s = summary_of(r.stderr)
    assert s["session"] == "s-run-1" and s["calls"] == 2 and s["proxy"] == "in-process proxy"
    assert s["tokens"]["input_tokens"] == 1200 + 1300 and s["tokens"]["reasoning_tokens"] == 128
    assert {m["model"] for m in s["models"]} == {"gpt-4o-mini-2024-07-18", "claude-sonnet-4-20250514"}
    assert s["cost_usd"] != "0.000000000"
    with open_ledger(f"sqlite:///{setup['db']}") as ledger:
        events = ledger.query(filters={"session": "s-run-1"}, limit=None)
    assert sorted((e.agent, e.backend) for e in events) == [("fixer", "anthropic"), ("fixer", "openai")]


def test_run_budget_refuses_calls_past_its_limit(setup: dict[str, Any]) -> None:
    r = llmbudget_run(setup, "--budget", "0.0005", env={"CALLS": "3"})
    assert r.returncode == 0, r.stderr
    refused = int(r.stdout.split()[2])
    s = summary_of(r.stderr)
    assert refused >= 1 and s["blocked"] == refused and s["budget_usd"] == "0.0005"
    assert "budget 'run " in r.stderr and "Cloud budget exhausted" in r.stderr
    assert s["session"].startswith("run-") and s["calls"] + refused == 4
    # (the fake upstream reports more tokens than a 50-token answer could hold, so the settled
    # spend may pass the limit by that one call; a real provider cannot)
    assert float(s["cost_usd"]) > 0


def test_run_uses_a_running_server(setup: dict[str, Any], fake: FakeUpstream, tmp_path: Path) -> None:
    cfg, _ = parse_config(config_text(fake.url))
    db = tmp_path / "served.db"
    with running_proxy(cfg, db) as served:
        session = f"s-{uuid.uuid4().hex[:8]}"
        r = llmbudget_run(
            {**setup, "db": str(db)}, "--server", served.url, "--session", session, env={"SEND_SESSION": "1"}
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == f"{served.url}/_llmb/session={session}/openai/v1"
        s = summary_of(r.stderr)
        assert s["calls"] == 2 and s["proxy"] == served.url
        assert {e.session for e in served.events(session=session)} == {session}


def test_a_server_that_does_not_answer_is_an_error(setup: dict[str, Any]) -> None:
    r = llmbudget_run(setup, "--server", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "--server: no llmbudget serve answers" in r.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_signals_are_passed_to_the_command(setup: dict[str, Any], sig: signal.Signals, code: int) -> None:
    proc = subprocess.Popen(
        [
            LLMBUDGET,
            "run",
            "--config",
            setup["config"],
            "--db",
            setup["db"],
            "--",
            sys.executable,
            setup["script"],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "SLEEP": "30"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while "sleeping" not in proc.stdout.readline():
        assert time.monotonic() < deadline
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "llmbudget run" in err and "2 calls" in err


def test_child_environment_and_codex_overrides() -> None:
    cfg = Config()
    env = runner.child_env(
        "http://127.0.0.1:9",
        cfg,
        agent="fixer",
        session="s1",
        environ={"ANTHROPIC_CUSTOM_HEADERS": "X-Mine: 1", "PATH": "/bin"},
    )
    routed = "http://127.0.0.1:9/_llmb/session=s1/agent=fixer"
    assert env["OPENAI_BASE_URL"] == f"{routed}/openai/v1"
    assert env["ANTHROPIC_BASE_URL"] == f"{routed}/anthropic"
    assert env["GOOGLE_GEMINI_BASE_URL"] == f"{routed}/gemini"
    assert env["LLMBUDGET_PROXY_URL"] == "http://127.0.0.1:9"
    assert env["ANTHROPIC_CUSTOM_HEADERS"] == "X-Mine: 1\nX-LLMBudget-Session: s1\nX-LLMBudget-Agent: fixer"
    assert env["GEMINI_CLI_CUSTOM_HEADERS"] == "X-LLMBudget-Session: s1, X-LLMBudget-Agent: fixer"
    assert (env["LLMBUDGET_SESSION"], env["LLMBUDGET_AGENT"], env["PATH"]) == ("s1", "fixer", "/bin")
    cmd = runner.child_command(
        ["/usr/bin/codex", "exec", "hi"], "http://127.0.0.1:9", cfg, agent=None, session="s1"
    )
    assert cmd[0] == "/usr/bin/codex" and cmd[-2:] == ["exec", "hi"]
    opts = dict(zip(cmd[1:-2:2], cmd[2:-2:2], strict=True))
    assert set(opts) == {"-c"}
    values = cmd[2:-2:2]
    assert 'model_providers.llmbudget.base_url="http://127.0.0.1:9/_llmb/session=s1/openai/v1"' in values
    assert 'model_providers.llmbudget.wire_api="responses"' in values
    assert 'model_providers.llmbudget.http_headers={"X-LLMBudget-Session" = "s1"}' in values
    assert values[-1] == 'model_provider="llmbudget"'
    gemini = runner.child_env(
        "http://127.0.0.1:9", cfg, agent=None, session="s1", environ={}, program="gemini"
    )
    assert "OPENAI_BASE_URL" not in gemini
    assert gemini["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:9/_llmb/session=s1/gemini"
    assert runner.child_command(["python", "x.py"], "http://x", cfg, agent=None, session="s") == [
        "python",
        "x.py",
    ]


def test_bad_budget_and_missing_command(setup: dict[str, Any]) -> None:
    for value, message in (
        ("two", "must be an amount in USD such as 2.00"),
        ("-1", "must be a positive amount in USD"),
        ("nan", "must be a positive amount in USD"),
        ("1e400", "must be at most $1,000,000,000"),
        ("0.0000000001", "must be at least $0.000000001"),
    ):
        # refused before the command starts: `touch` would leave the file behind
        marker = Path(setup["db"]).with_name(f"started-{value}")
        r = subprocess.run(
            [LLMBUDGET, "run", "--db", setup["db"], "--budget", value, "--", "touch", str(marker)],
            capture_output=True,
            text=True,
        )
        assert (r.returncode, r.stderr.strip()) == (1, f"error: --budget: {message}, got {value!r}"), value
        assert not marker.exists(), value
    r = subprocess.run([LLMBUDGET, "run", "--config", setup["config"]], capture_output=True, text=True)
    assert r.returncode == 1 and "CMD: give the command to run" in r.stderr
    r = subprocess.run(
        [LLMBUDGET, "run", "--config", setup["config"], "--db", setup["db"], "--", "no-such-program-xyz"],
        capture_output=True,
        text=True,
    )
    # as a shell: 127 and one line when there is no such command
    assert r.returncode == 127, r.stderr
    assert r.stderr.strip() == "error: no-such-program-xyz: command not found"


def test_a_command_that_cannot_run_exits_like_a_shell(setup: dict[str, Any], tmp_path: Path) -> None:
    plain = tmp_path / "not-executable.sh"
    plain.write_text("#!/bin/sh\necho hi\n")
    plain.chmod(0o644)
    orphan = tmp_path / "orphan.sh"
    orphan.write_text("#!/no/such/interpreter\necho hi\n")
    orphan.chmod(0o755)
    cases = [
        (str(plain), 126, f"{plain}: Permission denied"),
        (str(tmp_path), 126, f"{tmp_path}: Is a directory"),
        (str(orphan), 126, f"{orphan}: bad interpreter: No such file or directory"),
        (str(tmp_path / "missing"), 127, f"{tmp_path / 'missing'}: No such file or directory"),
    ]
    for program, code, message in cases:
        r = subprocess.run(
            [LLMBUDGET, "run", "--config", setup["config"], "--db", setup["db"], "--", program, "arg"],
            capture_output=True,
            text=True,
        )
        assert (r.returncode, r.stderr.strip()) == (code, f"error: {message}"), program


def test_a_session_or_agent_that_cannot_travel_in_a_url_path_is_refused(setup: dict[str, Any]) -> None:
    for option, value in (("--session", "a/b"), ("--agent", ".."), ("--agent", "x?y")):
        r = subprocess.run(
            [LLMBUDGET, "run", "--config", setup["config"], option, value, "--", "true"],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 1 and f"{option}: {value!r}" in r.stderr, r.stderr


def test_wrap_takes_the_runs_attribution_from_the_environment(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai

    from llmbudget import wrap
    from llmbudget.pricing import PriceBook

    monkeypatch.setenv("LLMBUDGET_SESSION", "s-env")
    monkeypatch.setenv("LLMBUDGET_AGENT", "fixer")
    with open_ledger(f"sqlite:///{tmp_path / 'w.db'}") as ledger:
        with openai.OpenAI(base_url=f"{fake.url}/v1", api_key="sk-test") as raw:
            client = wrap(raw, ledger=ledger, prices=PriceBook())
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            explicit = wrap(
                openai.OpenAI(base_url=f"{fake.url}/v1", api_key="sk-test"),
                ledger=ledger,
                prices=PriceBook(),
                session="mine",
            )
            explicit.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            explicit.close()
        ledger.flush()
        got = sorted((e.session, e.agent) for e in ledger.query(limit=None))
    assert got == [("mine", "fixer"), ("s-env", "fixer")]
