"""`llmbudget serve`: refuses public addresses without an admin token, serves and flushes on shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fakes.servers import free_port
from fakes.upstream import FakeUpstream

from llmbudget.cli import main
from llmbudget.cli.serve import check_bind, is_loopback
from llmbudget.errors import ConfigError
from llmbudget.store import open_ledger


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("::", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_public_address_needs_an_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="admin token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError, match=r"\$LLMB_ADMIN"):
        check_bind("0.0.0.0", "LLMB_ADMIN")
    monkeypatch.setenv("LLMB_ADMIN", "s3cret")
    check_bind("0.0.0.0", "LLMB_ADMIN")
    check_bind("127.0.0.1", None)


def test_serve_refuses_public_host_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 1
    assert "admin token" in capsys.readouterr().err


def test_serve_bad_flags_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./llmbudget.yaml
    assert main(["serve", "--port", "99999"]) == 1
    assert "--port: must be between 1 and 65535, got 99999" in capsys.readouterr().err
    assert main(["serve", "--log-level", "loud"]) == 1
    assert "--log-level: must be one of debug, info, warning, error" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "config file not found" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--db", str(tmp_path / "l.db")]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "choose another --port" in err
    assert "Traceback" not in err


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_subprocess_meters_and_flushes_on_shutdown(
    tmp_path: Path, fake: FakeUpstream, stop: int
) -> None:
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text(
        f"backends:\n  openai: {{kind: openai, base_url: {fake.url}, provider: openai}}\n"
        "storage:\n  flush_interval_s: 30\n"
    )  # long interval: only the shutdown flush can save it
    db = tmp_path / "ledger.db"
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "llmbudget"),
            "serve",
            "--config",
            str(cfg),
            "--db",
            f"sqlite:///{db}",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "serve did not come up"
            time.sleep(0.1)
        r = httpx.post(
            f"{base}/openai/v1/chat/completions?key=QUERYSECRET",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"X-LLMBudget-Agent": "cli-test"},
        )
        assert r.status_code == 200 and "x-llmbudget-request-id" in r.headers
        event_id = r.headers["x-llmbudget-request-id"]
    finally:
        proc.send_signal(stop)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "QUERYSECRET" not in out, "the access log must not print query strings"
    with open_ledger(f"sqlite:///{db}") as ledger:
        event = ledger.get(event_id)
    assert event is not None and event.agent == "cli-test" and event.source == "proxy"
