"""Every benchmark runs as `python -m benchmarks.<name>`, as docs/BENCHMARKS.md says.

`--help` exercises the module's entry point without running the benchmark: a module that loses
its `__main__` guard exits 0 silently, having measured nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.core.config import PROJECT_ROOT as ROOT

BENCHMARKS = sorted(
    path.stem
    for path in (ROOT / "benchmarks").glob("*.py")
    if path.stem not in {"__init__", "common"}
)


def test_the_benchmarks_are_found() -> None:
    assert {"accuracy", "predict", "load", "ingest", "fuzz"} <= set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_module_runs_its_entry_point(name: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage:"), completed.stdout
