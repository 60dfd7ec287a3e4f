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
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage:"), completed.stdout


def _row(run: str, seed: int, accuracy: float, **extra: object) -> dict:
    return {
        "dataset": "flowers_small",
        "run": run,
        "seed": seed,
        "status": "succeeded",
        "test_accuracy": accuracy,
        "seconds": 100.0,
        "machine": "2 cores (CPU A)",
        "date": "2026-11-24",
        **extra,
    }


def _auto(seed: int, accuracy: float, bottleneck: float, finetune: float) -> dict:
    candidates = [
        {"method": "bottleneck", "test": {"accuracy": bottleneck}},
        {"method": "finetune", "test": {"accuracy": finetune}},
        {"method": "scratch", "skipped": "too few images"},
    ]
    return _row(
        "auto", seed, accuracy, chosen="finetune", candidates=candidates, cache_hit=seed > 1
    )


def test_accuracy_summary_gives_mean_and_spread_per_method_and_judges_the_targets() -> None:
    from benchmarks.accuracy import render

    rows = [
        _row("reference", 1, 0.80),
        _row("reference", 2, 0.82),
        _auto(1, 0.90, 0.85, 0.90),
        _auto(2, 0.92, 0.87, 0.92),
    ]
    table = render(rows)
    summary = next(line for line in table.splitlines() if line.startswith("| flowers_small"))
    cells = [cell.strip() for cell in summary.split("|")[1:-1]]
    assert cells[1] == "0.810 ± 0.014"  # reference
    assert cells[2] == "0.860 ± 0.014"  # bottleneck, from auto's candidates
    assert cells[4] == "0.910 ± 0.014"  # auto
    assert cells[5] == "+10.0 pt"
    assert cells[6] == "ref +1 pt met; >= 0.9 met"
    assert cells[8] == "finetune, finetune"
    # one point short of its target is reported as missed, not rounded away
    low = render([_row("reference", 1, 0.80), _auto(1, 0.805, 0.80, 0.805)])
    assert "ref +1 pt **missed**; >= 0.9 **missed**" in low


def test_accuracy_summary_reports_calibration_error_per_dataset_and_judges_it() -> None:
    from benchmarks.accuracy import render

    def calibrated(seed: int, before: float, after: float, temperature: float) -> dict:
        row = _auto(seed, 0.9, 0.85, 0.9)
        row["calibration"] = {"ece_before": before, "ece_after": after, "temperature": temperature}
        return row

    table = render([calibrated(1, 0.08, 0.02, 1.4), calibrated(2, 0.10, 0.04, 1.9)])
    line = next(line for line in table.splitlines() if line.startswith("| flowers_small | 0.090"))
    cells = [cell.strip() for cell in line.split("|")[1:-1]]
    assert cells == [
        "flowers_small",
        "0.090 ± 0.014",
        "0.030 ± 0.014",
        "1.40-1.90",
        "met (worst seed 0.040)",
    ]  # fmt: skip  (a row of the table, as printed)
    missed = render([calibrated(1, 0.08, 0.06, 1.2)])
    assert "**missed** (worst seed 0.060)" in missed


def test_outlier_auroc_is_the_chance_an_outlier_scores_above_an_inlier() -> None:
    import numpy as np

    from benchmarks.outliers import auroc

    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert auroc(np.array([0.1, 0.3]), np.array([0.2, 0.4])) == 0.75
    assert auroc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5  # ties count half
