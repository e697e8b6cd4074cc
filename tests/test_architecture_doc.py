"""docs/architecture.md stays true: every module path it names exists, every layer of the contract is in it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"


def test_every_module_path_named_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    paths = sorted(set(re.findall(r"`(llmbudget/[^`\s]+)`", text)))
    assert len(paths) > 40, "the document names the modules it describes"
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert missing == [], f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_layer_of_the_contract_is_described() -> None:
    text = DOC.read_text(encoding="utf-8")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    modules = [m.strip() for layer in layers for m in re.split(r"[|:]", layer)]
    named = set(re.findall(r"`(llmbudget/[^`\s]+)`", text))
    for module in modules:
        path = module.replace(".", "/")
        assert f"{path}.py" in named or f"{path}/" in named, f"{module} (a layer) is not in the document"
