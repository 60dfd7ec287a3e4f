"""Accuracy and job time of the DEFAULT request, through the running service, next to the
plain-Keras script a user would write (benchmarks/reference_keras.py) on the same splits.

    .venv/bin/python -m benchmarks.accuracy [--datasets NAME ...] [--seeds 1 2 3]
                                             [--scratch-datasets NAME ...] [--timing-dataset NAME]

Starts the API and one worker (embedded broker, SQLite) with the offline weights of
../shared/weights, uploads every dataset of ../shared/data as a zip, and runs, per dataset and
seed, the request a new user sends: `{"dataset_id": ..., "seed": s}` (method auto; nothing else
set). An auto job reports its candidates: its bottleneck and fine-tune candidates are exactly
the models that `method: "bottleneck"` and `method: "finetune"` jobs with the defaults train
(same settings, same seed), so one job gives all three. Scratch runs as its own default job on
the datasets named. On the timing dataset, a bottleneck-only job runs first on a cold feature
cache, the cache is cleared, and auto's first seed runs cold too; later seeds reuse the cached
features (the "repeat"). Results go to docs/BENCHMARKS.md (section "accuracy").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
import zipfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks import reference_keras
from benchmarks.common import SHARED, live_service, machine, write_section

# Targets of issue 13 (3-seed means, default request).
AUTO_OVER_REFERENCE = 0.01
AUTO_TARGETS = {"cats_vs_dogs_small": 0.98, "flowers_small": 0.90}
AUTO_MINUTES_TARGET = 12.0
REPEAT_RATIO_TARGET = 1.5


def shared_datasets() -> list[str]:
    """Every set in ../shared/data with a train folder (more may appear)."""
    return sorted(path.name for path in (SHARED / "data").iterdir() if (path / "train").is_dir())


def zip_dataset(name: str, target: Path) -> None:
    root = SHARED / "data" / name
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for split in ("train", "validation", "test"):
            for image in sorted((root / split).rglob("*")):
                if image.is_file() and not image.name.startswith("."):
                    archive.write(image, f"{name}/{image.relative_to(root)}")


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


class Runner:
    def __init__(self, base: str, headers: dict[str, str], cache_dir: Path) -> None:
        self.base, self.headers, self.cache_dir = base, headers, cache_dir

    def upload(self, dataset: str, work: Path) -> str:
        archive = work / f"{dataset}.zip"
        zip_dataset(dataset, archive)
        with archive.open("rb") as handle:
            response = httpx.post(
                f"{self.base}/datasets",
                files={"file": handle},
                data={"name": dataset},
                timeout=600,
                headers=self.headers,
            )
        response.raise_for_status()
        return str(response.json()["id"])

    def job(self, dataset: str, dataset_id: str, *, seed: int, method: str | None) -> dict:
        # the request a new user sends: the dataset (and here a seed); method only if not auto
        request: dict[str, object] = {"dataset_id": dataset_id, "seed": seed}
        if method is not None:
            request["method"] = method
        accepted = httpx.post(f"{self.base}/jobs", json=request, timeout=60, headers=self.headers)
        accepted.raise_for_status()
        job_id = accepted.json()["id"]
        while True:
            job = httpx.get(f"{self.base}/jobs/{job_id}", timeout=30, headers=self.headers).json()
            if job["status"] in {"succeeded", "failed", "cancelled"}:
                break
            time.sleep(2)
        result = job["result"] or {}
        evaluation = result.get("evaluation") or {}
        row = {
            "dataset": dataset,
            "run": method or "auto",
            "seed": seed,
            "status": job["status"],
            "test_accuracy": evaluation.get("accuracy"),
            "split": evaluation.get("split"),
            "calibration": evaluation.get("calibration"),
            "outliers": evaluation.get("outliers"),
            "model": result.get("model"),
            "seconds": seconds_between(job["started_at"], job["finished_at"]),
            "chosen": (result.get("chosen") or {}).get("method"),
            "reason": (result.get("chosen") or {}).get("reason"),
            "candidates": result.get("candidates"),
            "warnings": result.get("warnings"),
            "active": (result.get("model") or {}).get("active"),
            "cache_hit": result.get("feature_cache_hit"),
            "feature_seconds": result.get("feature_seconds"),
            "image_size": (result.get("candidates") or [{}])[0]
            .get("settings", {})
            .get("image_size"),
            "error": job["error"],
            "machine": machine(),
            "date": _today(),
        }
        print(json.dumps(row), flush=True)
        return row

    def clear_feature_cache(self) -> None:
        for child in self.cache_dir.glob("*"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", help="default: every set in ../shared/data")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--scratch-datasets",
        nargs="*",
        default=None,
        help="run default scratch jobs on these (default: all; none: no flag values)",
    )
    parser.add_argument("--timing-dataset", default="cats_vs_dogs_small")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument(
        "--section",
        default="accuracy",
        help="the docs/BENCHMARKS.md section to write (a partial run: its own)",
    )
    parser.add_argument(
        "--only-scratch",
        action="store_true",
        help="only the default scratch jobs (on --scratch-datasets), written to "
        "the section accuracy-scratch",
    )
    parser.add_argument("--keep", type=Path, help="run the service in this directory and keep it")
    parser.add_argument(
        "--from-log",
        nargs="+",
        type=Path,
        help="only write the tables from the JSON rows of earlier runs' output",
    )
    args = parser.parse_args()
    if args.from_log:
        rows = [row for path in args.from_log for row in rows_from_log(path)]
        body = render(rows)
        write_section("accuracy", body)
        print(body)
        return
    datasets = args.datasets or shared_datasets()
    scratch = datasets if args.scratch_datasets is None else args.scratch_datasets
    if args.only_scratch:
        datasets = [name for name in datasets if name in scratch]
    rows: list[dict] = []
    if not (args.no_reference or args.only_scratch):
        for dataset in datasets:
            for row in reference_keras.run(dataset, args.seeds):
                row.update(status="succeeded", machine=machine(), date=_today())
                print(json.dumps(row), flush=True)
                rows.append(row)
    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="acc-")))
        work.mkdir(parents=True, exist_ok=True)
        weights = str(SHARED / "weights")
        with live_service(
            work / "var",
            with_worker=True,
            pretrained_weights_dir=weights,
            allow_weights_download="false",
        ) as live:
            runner = Runner(live.base, live.headers, work / "var" / "feature_cache")
            for dataset in datasets:
                dataset_id = runner.upload(dataset, work)
                if dataset == args.timing_dataset and not args.only_scratch:
                    rows.append(
                        runner.job(dataset, dataset_id, seed=args.seeds[0], method="bottleneck")
                    )
                    runner.clear_feature_cache()
                for seed in [] if args.only_scratch else args.seeds:
                    rows.append(runner.job(dataset, dataset_id, seed=seed, method=None))
                if dataset in scratch:
                    for seed in args.seeds:
                        rows.append(runner.job(dataset, dataset_id, seed=seed, method="scratch"))
    if args.only_scratch:
        body = render(rows, title='## Scratch with the default request (`method: "scratch"`)')
        write_section("accuracy-scratch", body)
    else:
        body = render(rows)
        write_section(args.section, body)
    print(body)


def _candidate(row: dict, method: str) -> dict | None:
    return next((c for c in row.get("candidates") or [] if c["method"] == method), None)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def _series(rows: list[dict]) -> dict[tuple[str, str], list[float]]:
    """(dataset, method) -> test accuracies over seeds; bottleneck and finetune come from the
    auto jobs' candidates."""
    series: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row["status"] != "succeeded":
            continue
        if row["run"] == "reference":
            series[(row["dataset"], "reference")].append(row["test_accuracy"])
        elif row["run"] == "scratch":
            series[(row["dataset"], "scratch")].append(row["test_accuracy"])
        elif row["run"] == "auto":
            series[(row["dataset"], "auto")].append(row["test_accuracy"])
            for method in ("bottleneck", "finetune"):
                candidate = _candidate(row, method)
                if candidate and candidate.get("test"):
                    series[(row["dataset"], method)].append(candidate["test"]["accuracy"])
    return series


def render(
    rows: list[dict],
    title: str = "## Accuracy of the default request (`POST /jobs` with only a dataset)",
) -> str:
    here, today = machine(), _today()
    dates = sorted({row.get("date") or today for row in rows})
    machines = sorted({row.get("machine") or here for row in rows})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    series = _series(rows)
    datasets = sorted({row["dataset"] for row in rows})
    seeds = sorted({row["seed"] for row in rows})
    lines = [
        title,
        "",
        f"Measured {when} on {', '.join(machines)}, CPU only, with",
        "`.venv/bin/python -m benchmarks.accuracy`: the service (API + one worker, SQLite,",
        "embedded broker) with the offline MobileNetV2 weights, every dataset of",
        f"`../shared/data`, seeds {', '.join(map(str, seeds))}; test accuracy, mean ± standard",
        'deviation over the seeds. The request is `{"dataset_id": ..., "seed": s}` (auto);',
        "bottleneck and finetune are auto's candidates, which are the models the default",
        '`method: "bottleneck"` / `"finetune"` requests train. Scratch: `method: "scratch"`,',
        "nothing else set. Reference: `benchmarks/reference_keras.py` (frozen MobileNetV2 at",
        "160 px, dropout + softmax, Adam, early stopping) on the same splits in the same run.",
        "",
        "| dataset | reference | bottleneck | finetune | auto | auto - reference | "
        "target | scratch | auto kept |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset in datasets:
        auto, reference = series.get((dataset, "auto"), []), series.get((dataset, "reference"), [])
        gain = "-"
        verdicts = []
        if auto and reference:
            delta = statistics.mean(auto) - statistics.mean(reference)
            gain = f"{delta * 100:+.1f} pt"
            verdicts.append(f"ref +1 pt {'met' if delta >= AUTO_OVER_REFERENCE else '**missed**'}")
        if dataset in AUTO_TARGETS and auto:
            goal = AUTO_TARGETS[dataset]
            verdicts.append(f">= {goal} {'met' if statistics.mean(auto) >= goal else '**missed**'}")
        kept = [
            r["chosen"]
            for r in rows
            if r["dataset"] == dataset and r["run"] == "auto" and r["status"] == "succeeded"
        ]
        lines.append(
            f"| {dataset} | {_mean_std(reference)} | {_mean_std(series.get((dataset, 'bottleneck'), []))} "
            f"| {_mean_std(series.get((dataset, 'finetune'), []))} | {_mean_std(auto)} | {gain} | "
            f"{'; '.join(verdicts) or '-'} | {_mean_std(series.get((dataset, 'scratch'), []))} | "
            f"{', '.join(kept) or '-'} |"
        )
    lines += [
        "",
        "Every job (seconds: the job's started_at..finished_at):",
        "",
        "| dataset | run | seed | test accuracy | seconds | chosen / notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        accuracy = row.get("test_accuracy")
        shown = f"{accuracy:.3f}" if accuracy is not None else row["status"]
        notes = []
        if row.get("chosen"):
            notes.append(f"kept {row['chosen']}")
        if row.get("cache_hit") is not None:
            notes.append(f"feature cache {'hit' if row['cache_hit'] else 'miss'}")
        if row.get("image_size"):
            notes.append(f"{row['image_size']} px")
        if row.get("active") is False and row.get("warnings"):
            notes.append("saved, NOT activated")
        notes += [w[:140] for w in row.get("warnings") or []]
        if row.get("error"):
            notes.append(row["error"][:140])
        lines.append(
            f"| {row['dataset']} | {row['run']} | {row['seed']} | {shown} | "
            f"{row['seconds']:.0f} | {'; '.join(notes)} |"
        )
    lines += _calibration(rows)
    lines += _timing(rows)
    return "\n".join(lines) + "\n"


ECE_TARGET = 0.05


def _calibration(rows: list[dict]) -> list[str]:
    """The saved models' expected calibration error (15 bins, on the split they are evaluated
    on) before and after the temperature fitted on validation, per dataset."""
    calibrated = [r for r in rows if r["run"] == "auto" and r.get("calibration")]
    if not calibrated:
        return []
    lines = [
        "",
        "Calibration of the saved auto models: expected calibration error (15 bins) on the split",
        "each job is evaluated on (test; validation only where a set has no test split, and then",
        "in-sample) before and after the temperature fitted on validation (accuracy is unchanged",
        "by it: no answer changes its class).",
        "",
        "| dataset | ECE before | ECE after | temperature | target (ECE after <= 0.05) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for dataset in sorted({r["dataset"] for r in calibrated}):
        reports = [r["calibration"] for r in calibrated if r["dataset"] == dataset]
        after = [c["ece_after"] for c in reports]
        temperatures = [c["temperature"] for c in reports]
        lines.append(
            f"| {dataset} | {_mean_std([c['ece_before'] for c in reports])} | {_mean_std(after)} "
            f"| {min(temperatures):.2f}-{max(temperatures):.2f} "
            f"| {'met' if max(after) <= ECE_TARGET else '**missed**'} (worst seed {max(after):.3f}) |"
        )
    return lines


def _timing(rows: list[dict]) -> list[str]:
    cold = [
        r
        for r in rows
        if r["run"].startswith("bottleneck")
        and r.get("cache_hit") is False
        and r["status"] == "succeeded"
    ]
    if not cold:
        return []
    dataset = cold[0]["dataset"]
    autos = [
        r
        for r in rows
        if r["dataset"] == dataset and r["run"] == "auto" and r["status"] == "succeeded"
    ]
    first = [r["seconds"] for r in autos if r.get("cache_hit") is False]
    repeat = [r["seconds"] for r in autos if r.get("cache_hit") is True]
    lines = ["", f"Time on {dataset} (2 CPU cores):", ""]
    lines.append(f"- bottleneck only, cold feature cache: {cold[0]['seconds']:.0f} s")
    if first:
        minutes = first[0] / 60
        verdict = "met" if minutes <= AUTO_MINUTES_TARGET else "**missed**"
        lines.append(
            f"- auto, cold feature cache: {minutes:.1f} min (target "
            f"<= {AUTO_MINUTES_TARGET:.0f} min: {verdict})"
        )
    if repeat:
        ratio = statistics.mean(repeat) / cold[0]["seconds"]
        verdict = "met" if ratio <= REPEAT_RATIO_TARGET else "**missed**"
        lines.append(
            f"- auto repeated on cached features: {statistics.mean(repeat):.0f} s, "
            f"{ratio:.2f}x the bottleneck-only job (target <= {REPEAT_RATIO_TARGET}x: "
            f"{verdict})"
        )
    return lines


def _today() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d}"


def rows_from_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


if __name__ == "__main__":
    main()
