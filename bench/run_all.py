"""Run every `bench/bench_*.py` and `bench/proxy_overhead.py`: each module's `main()` returns a dict of figures.

    python bench/run_all.py [--quick] [NAME ...]     (make bench BENCH_ARGS=--quick)

A module whose `main` accepts `quick` gets `quick=True` with `--quick` (small sizes). Prints a
table and writes bench/results/latest.json (with the machine's load average: the figures are
only comparable on a quiet machine).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: benchmarks whose file is not named bench_*.py (each has `main(quick=...)` returning a dict)
EXTRA = ("proxy_overhead.py",)


def _collect() -> list[Path]:
    """Every `bench_*.py` and the EXTRA modules, in name order."""
    return sorted([*HERE.glob("bench_*.py"), *(HERE / name for name in EXTRA if (HERE / name).exists())])


def run(quick: bool, only: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for path in _collect():
        name = path.stem.removeprefix("bench_")
        if only and name not in only and path.stem not in only:
            continue
        print(f"== {path.name}", flush=True)
        t0 = time.perf_counter()
        try:
            mod = _load(path)
            params = inspect.signature(mod.main).parameters
            figures = mod.main(quick=True) if quick and "quick" in params else mod.main()
            results[name] = {"figures": figures, "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # one broken benchmark must not hide the others
            traceback.print_exc()
            results[name] = {
                "error": f"{type(e).__name__}: {e}",
                "seconds": round(time.perf_counter() - t0, 1),
            }
    return results


def _table(results: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(json.dumps(results, indent=2, default=str))
        return
    table = Table(title="llmbudget benchmarks", title_justify="left")
    table.add_column("benchmark")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, res in results.items():
        if "error" in res:
            table.add_row(name, "[red]error[/]", res["error"])
            continue
        figs = res["figures"] if isinstance(res["figures"], dict) else {"result": res["figures"]}
        for i, (k, v) in enumerate(figs.items()):
            shown = f"{v:,}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)
            table.add_row(name if i == 0 else "", str(k), shown)
    Console().print(table)


def main() -> int:
    args = sys.argv[1:]
    quick = "--quick" in args
    only = [a for a in args if not a.startswith("-")]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results = run(quick, only)
    _table(results)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    doc = {
        "started": started,
        "quick": quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "results": results,
    }
    (out / "latest.json").write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {out / 'latest.json'}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
