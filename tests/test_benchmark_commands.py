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


def _accuracy_row(*, machine: str, date: str, accuracy: float) -> dict:
    return {
        "dataset": "cats_vs_dogs_small", "run": "scratch", "status": "succeeded",
        "accuracy": accuracy, "split": "test", "seconds": 100.0, "best_epoch": 3,
        "cache_hit": None, "feature_seconds": None, "single_view_accuracy": None, "error": None,
        "request": {"method": "scratch", "image_size": 128, "epochs": 40, "seed": 2},
        "machine": machine, "date": date,
    }  # fmt: skip


def test_accuracy_table_of_merged_runs_names_each_rows_machine() -> None:
    from benchmarks.accuracy import render

    rows = [
        _accuracy_row(machine="2 cores (CPU A)", date="2026-11-23", accuracy=0.79),
        _accuracy_row(machine="2 cores (CPU B)", date="2026-11-24", accuracy=0.81),
    ]
    table = render(rows)
    assert "Measured 2026-11-23 to 2026-11-24 on the machine in each row's notes" in table
    assert "| 0.790 | >= 0.8 (**missed**) |" in table
    assert "size 128, 40 epochs, seed 2; 2 cores (CPU B) |" in table

    single = render(rows[1:])
    assert "Measured 2026-11-24 on 2 cores (CPU B), CPU only" in single
    assert "seed 2 |" in single
