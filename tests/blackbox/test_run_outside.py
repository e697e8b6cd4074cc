"""`llmbudget run` from outside: it finds the `llmbudget serve` named by the config and the
server attributes the command's calls from the headers the run and the client send; a run killed
with `kill -9` loses no answered call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fakes.servers import free_port

LLMBUDGET = Path(sys.executable).with_name("llmbudget")

SCRIPT = textwrap.dedent(
    """
    import os
    import anthropic

    # what Claude Code sends on every call, plus the run's session as a plain SDK script passes it
    headers = {"user-agent": "claude-cli/2.1.197 (external, cli)",
               "x-claude-code-session-id": "cc-own-session",
               "X-LLMBudget-Session": os.environ["LLMBUDGET_SESSION"]}
    with anthropic.Anthropic(api_key="sk-ant-test", default_headers=headers, max_retries=0) as a:
        a.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                          messages=[{"role": "user", "content": "hi"}])
    print(os.environ["ANTHROPIC_BASE_URL"])
    print(os.environ["ANTHROPIC_CUSTOM_HEADERS"].replace("\\n", "|"))
    """
)


def test_run_uses_the_configured_server(
    serve: Callable[..., Any],
    write_config: Callable[..., Path],
    llmbudget: Callable[..., Any],
    tmp_path: Path,
) -> None:
    server = serve(config=write_config(storage={"flush_interval_s": 0.1}))
    port = int(server.url.rsplit(":", 1)[1])
    config = write_config(server={"port": port})  # what a user's config says: the server's port
    script = tmp_path / "agent.py"
    script.write_text(SCRIPT)
    done = llmbudget(
        "run",
        "--config",
        str(config),
        "--db",
        server.db,
        "--session",
        "pr-7",
        "--json",
        "--",
        sys.executable,
        str(script),
    )
    assert done.returncode == 0, done.stderr
    base_url, custom_headers = done.stdout.split()[0], done.stdout.split("\n")[1]
    assert base_url == f"{server.url}/_llmb/session=pr-7/anthropic"
    assert custom_headers == "X-LLMBudget-Session: pr-7"
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    assert (summary["proxy"], summary["session"], summary["calls"]) == (server.url, "pr-7", 1)
    (event,) = [e for e in server.events() if e["session"] == "pr-7"]
    assert (event["agent"], event["backend"], event["source"]) == ("claude-code", "anthropic", "proxy")


PLAIN_SCRIPT = textwrap.dedent(
    """
    import os
    import anthropic, openai

    # the official SDKs as a plain script uses them: no llmbudget header, the base URLs from the environment
    with openai.OpenAI(api_key="sk-test", max_retries=0) as o:
        o.chat.completions.create(model="gpt-4o-mini", max_tokens=50,
                                  messages=[{"role": "user", "content": "hi"}])
    with anthropic.Anthropic(api_key="sk-ant-test", max_retries=0) as a:
        a.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                          messages=[{"role": "user", "content": "hi"}])
    print(os.environ["OPENAI_BASE_URL"])
    print(os.environ["ANTHROPIC_BASE_URL"])
    """
)


def test_a_running_server_attributes_a_plain_sdk_script_from_the_base_url(
    serve: Callable[..., Any],
    write_config: Callable[..., Path],
    llmbudget: Callable[..., Any],
    cli_json: Callable[..., Any],
    tmp_path: Path,
) -> None:
    server = serve(config=write_config(storage={"flush_interval_s": 0.1}))
    config = write_config(server={"port": int(server.url.rsplit(":", 1)[1])})
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_SCRIPT)
    done = llmbudget(
        "run", "--config", str(config), "--db", server.db, "--agent", "fixer bot", "--session", "pr 8",
        "--", sys.executable, str(script),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # the printed summary counts both calls: the server put them in the run's session
    first = done.stderr.splitlines()[0]
    assert "session pr 8" in first and "2 calls" in first and f"via {server.url}" in first, done.stderr
    rows = cli_json("events", "--session", "pr 8", "--db", server.db, "--config", str(config))["events"]
    assert sorted((r["agent"], r["backend"], r["source"]) for r in rows) == [
        ("fixer bot", "anthropic", "proxy"),
        ("fixer bot", "openai", "proxy"),
    ]
    # the attribution travelled in the base URLs' path
    openai_url, anthropic_url = done.stdout.split()
    assert openai_url == f"{server.url}/_llmb/session=pr%208/agent=fixer%20bot/openai/v1"
    assert anthropic_url == f"{server.url}/_llmb/session=pr%208/agent=fixer%20bot/anthropic"


LOOP_SCRIPT = textwrap.dedent(
    """
    import openai

    # an agent calling at its own pace until it is stopped; each answered call's event id on stdout
    with openai.OpenAI(api_key="sk-test", max_retries=0) as o:
        while True:
            raw = o.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
            raw.parse()
            print(raw.headers["x-llmbudget-request-id"], flush=True)
    """
)


def test_a_run_killed_with_kill_9_loses_no_answered_call(
    write_config: Callable[..., Path],
    llmbudget: Callable[..., Any],
    cli_json: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """`llmbudget run` with its in-process proxy, SIGKILLed with its command mid-run: every call the
    command saw answered is in the ledger once the next process that writes to it has started."""
    config = write_config(server={"port": free_port()})  # nothing answers there: the in-process proxy
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    script = tmp_path / "loop.py"
    script.write_text(LOOP_SCRIPT)
    proc = subprocess.Popen(
        [str(LLMBUDGET), "run", "--config", str(config), "--db", db, "--session", "doomed", "--",
         sys.executable, str(script)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    answered: list[str] = []
    deadline = time.monotonic() + 60
    while len(answered) < 60:
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        answered.append(line.strip())
    os.killpg(proc.pid, signal.SIGKILL)  # `run` and its command, as `kill -9 -PGID` does
    proc.communicate(timeout=10)
    # the next process that writes to the ledger (another run) replays what the killed one logged
    done = llmbudget("run", "--config", str(config), "--db", db, "--session", "next", "--", "true")
    assert done.returncode == 0, done.stderr
    rows = cli_json("events", "--session", "doomed", "--limit", "1000", "--db", db)["events"]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} of {len(answered)} answered calls lost"
