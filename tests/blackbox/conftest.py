"""Black-box tests: llmbudget run as its own process, the way a user runs it.

Every test here starts this tree's own `llmbudget` console script (next to the running Python),
never one found on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

#: the console script installed with this tree (`pip install -e .`)
LLMBUDGET = Path(sys.executable).with_name("llmbudget")


@pytest.fixture
def llmbudget() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `llmbudget ARGS...` in a subprocess (stdout and stderr piped, text); extra env via env=."""
    assert LLMBUDGET.exists(), f"{LLMBUDGET} is missing: `pip install -e .` in this tree's venv"

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [str(LLMBUDGET), *args], capture_output=True, text=True, env=full_env, timeout=timeout
        )

    return run
