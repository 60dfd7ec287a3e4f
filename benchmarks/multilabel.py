"""Multi-label accuracy: the service's default request against a plain-Keras sigmoid script,
on the side-by-side photo-pair sets of benchmarks/multilabel_sets.py.

    .venv/bin/python -m benchmarks.multilabel [--seeds 1 2 3] [--sets NAME ...]

For each set and seed: the service (API + one worker, SQLite, embedded broker) gets the zip
(images + labels.csv with its splits) and the request a new user sends (the dataset and a
seed), and its evaluation on the test split is read back; the reference is what a user would
write by hand: a frozen ImageNet MobileNetV2 at 160 px, global-average-pooled features,
dropout 0.2 and a Dense sigmoid layer, binary cross-entropy, Adam 1e-3, batch 32, early
stopping on validation loss (patience 5, best weights restored), at most 50 epochs, and 0.5 as
every label's threshold. Both are scored by the same functions (app/ml/multilabel.py). Writes
the "multilabel" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PROJECT_ROOT, SHARED, machine, write_section
from benchmarks.multilabel_sets import BY_NAME, SETS, build, read_labels

REFERENCE_SIZE = 160
WEIGHTS = SHARED / "weights"
REFERENCE_WEIGHTS = WEIGHTS / "mobilenet_v2_1.0_224_no_top_tfslim.h5"
TARGET_MAP_GAIN = 0.01  # the default request beats the reference by 1 point of mAP


def zipped(folder: Path) -> Path:
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                handle.write(path, str(path.relative_to(folder)))
    return archive


def _scores(labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray) -> dict:
    from app.ml.multilabel import evaluate_multilabel, multilabel_calibration_error

    evaluation = evaluate_multilabel(labels, probabilities, thresholds, ["?"] * labels.shape[1])
    return {
        "map": evaluation["mean_average_precision"],
        "macro_f1": evaluation["macro_f1"],
        "exact_match": evaluation["exact_match"],
        "ece": multilabel_calibration_error(probabilities, labels),
    }


def reference_features(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each split's frozen MobileNetV2 features (160 px) and 0/1 label rows."""
    import keras
    from PIL import Image

    classes, by_split = read_labels(folder)
    base = keras.applications.MobileNetV2(
        include_top=False,
        weights=str(REFERENCE_WEIGHTS),
        input_shape=(REFERENCE_SIZE, REFERENCE_SIZE, 3),
        pooling="avg",
    )
    preprocess = keras.applications.mobilenet_v2.preprocess_input
    arrays = {}
    for split, rows in by_split.items():
        pixels = np.stack(
            [
                np.asarray(
                    Image.open(folder / path)
                    .convert("RGB")
                    .resize((REFERENCE_SIZE, REFERENCE_SIZE), Image.Resampling.BILINEAR),
                    dtype=np.float32,
                )
                for path, _ in rows
            ]
        )
        labels = np.array(
            [[float(name in ls) for name in classes] for _, ls in rows], dtype=np.float32
        )
        features = base.predict(preprocess(pixels), batch_size=64, verbose=0)
        arrays[split] = (features, labels)
    return arrays


def reference_run(arrays: dict[str, tuple[np.ndarray, np.ndarray]], *, seed: int) -> dict:
    import keras

    keras.utils.set_random_seed(seed)
    train, validation, test = arrays["train"], arrays["validation"], arrays["test"]
    model = keras.Sequential(
        [
            keras.Input((train[0].shape[1],)),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(train[1].shape[1], activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    model.fit(
        *train,
        validation_data=validation,
        epochs=50,
        batch_size=32,
        callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)],
        verbose=0,
    )
    probabilities = model.predict(test[0], verbose=0).astype(np.float64)
    return _scores(test[1], probabilities, np.full(test[1].shape[1], 0.5))


def _default_job(base: str, headers: dict[str, str], dataset_id: str, seed: int) -> dict:
    """The request a new user sends (the dataset, and here a seed); the finished job."""
    import httpx

    request = {"dataset_id": dataset_id, "seed": seed}
    accepted = httpx.post(f"{base}/jobs", json=request, timeout=60, headers=headers)
    accepted.raise_for_status()
    job_id = accepted.json()["id"]
    while True:
        job: dict[str, Any] = httpx.get(f"{base}/jobs/{job_id}", timeout=30, headers=headers).json()
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            return job
        time.sleep(2)


def service_runs(folders: dict[str, Path], *, seeds: list[int], work: Path) -> list[dict]:
    import httpx

    from benchmarks.accuracy import seconds_between
    from benchmarks.common import live_service

    rows = []
    with live_service(
        work / "var",
        with_worker=True,
        pretrained_weights_dir=str(WEIGHTS),
        allow_weights_download="false",
    ) as live:
        for name, folder in folders.items():
            with zipped(folder).open("rb") as handle:
                response = httpx.post(
                    f"{live.base}/datasets",
                    files={"file": handle},
                    data={"name": name},
                    headers=live.headers,
                    timeout=600,
                )
            response.raise_for_status()
            assert response.json()["task"] == "multilabel"
            dataset_id = response.json()["id"]
            for seed in seeds:
                job = _default_job(live.base, live.headers, dataset_id, seed)
                row: dict[str, Any] = {"set": name, "seed": seed, "run": "service"}
                if job["status"] != "succeeded":
                    rows.append({**row, "error": job["error"]})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                result = job["result"]
                evaluation = result["evaluation"]
                calibration = evaluation.get("calibration") or {}
                row.update(
                    kept=result["chosen"]["method"],
                    map=evaluation["mean_average_precision"],
                    macro_f1=evaluation["macro_f1"],
                    exact_match=evaluation["exact_match"],
                    ece_before=calibration.get("ece_before"),
                    ece=calibration.get("ece_after"),
                    seconds=seconds_between(job["started_at"], job["finished_at"]),
                )
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def report(rows: list[dict], *, seeds: list[int], sets: list[str]) -> str:
    def mean(name: str, run: str, key: str) -> float:
        values = [r[key] for r in rows if r["set"] == name and r["run"] == run and key in r]
        return statistics.mean(values) if values else float("nan")

    lines = [
        "## Multi-label sets: the default request against a plain-Keras sigmoid script",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, CPU only, with",
        f"`.venv/bin/python -m benchmarks.multilabel --seeds {' '.join(map(str, seeds))}`.",
        "Each image is two photos side by side (a pet or flower and a vehicle or object, from",
        "two sets of ../shared/data; a quarter of them one photo beside a grey tile), labelled",
        "with both photos' classes (benchmarks/multilabel_sets.py). The service gets the zip",
        "and the default request (dataset and seed); the reference is a frozen MobileNetV2 at",
        "160 px with a sigmoid layer (benchmarks/multilabel.py), every threshold 0.5. Scores on",
        "the test split, means over the seeds; the service's F1 and exact match are at its",
        "per-label thresholds. ECE: every image's every label, 15 bins.",
        "",
        "| set | labels | images (train/val/test) | service mAP | reference mAP | gain | "
        "service macro F1 / exact match | reference macro F1 / exact match | service ECE "
        "before -> after | reference ECE | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in sets:
        spec = BY_NAME[name]
        labels = next((r.get("labels") for r in rows if r["set"] == name and "labels" in r), "?")
        service, reference = mean(name, "service", "map"), mean(name, "reference", "map")
        gain = service - reference
        lines.append(
            f"| {name} | {labels} | {spec.sizes['train']}/{spec.sizes['validation']}/"
            f"{spec.sizes['test']} | {service:.3f} | {reference:.3f} | {gain * 100:+.1f} pt | "
            f"{mean(name, 'service', 'macro_f1'):.3f} / {mean(name, 'service', 'exact_match'):.3f}"
            f" | {mean(name, 'reference', 'macro_f1'):.3f} / "
            f"{mean(name, 'reference', 'exact_match'):.3f} | "
            f"{mean(name, 'service', 'ece_before'):.3f} -> {mean(name, 'service', 'ece'):.3f} | "
            f"{mean(name, 'reference', 'ece'):.3f} | "
            f"{'met' if gain >= TARGET_MAP_GAIN else '**missed**'} |"
        )
    lines += [
        "",
        "| set | seed | service kept | service mAP | reference mAP |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in sets:
        for seed in seeds:
            service = next(
                (r for r in rows if (r["set"], r["seed"], r["run"]) == (name, seed, "service")), {}
            )
            reference = next(
                (r for r in rows if (r["set"], r["seed"], r["run"]) == (name, seed, "reference")),
                {},
            )
            lines.append(
                f"| {name} | {seed} | {service.get('kept', service.get('error', '?'))} | "
                f"{service.get('map', float('nan')):.3f} | {reference.get('map', float('nan')):.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--sets", nargs="+", default=[s.name for s in SETS])
    parser.add_argument(
        "--work", type=Path, default=PROJECT_ROOT / "var" / "benchmarks" / "multilabel"
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not write the docs")
    args = parser.parse_args()
    folders = {name: build(BY_NAME[name], args.work / "sets") for name in args.sets}
    rows: list[dict] = []
    for name, folder in folders.items():
        arrays = reference_features(folder)
        for seed in args.seeds:
            row = {
                "set": name,
                "seed": seed,
                "run": "reference",
                **reference_run(arrays, seed=seed),
            }
            row["labels"] = arrays["train"][1].shape[1]
            print(json.dumps(row), flush=True)
            rows.append(row)
    rows += service_runs(folders, seeds=args.seeds, work=args.work / "service")
    (args.work / "rows.json").write_text(json.dumps(rows, indent=1))
    text = report(rows, seeds=args.seeds, sets=args.sets)
    print(text)
    if not args.no_write:
        write_section("multilabel", text)


if __name__ == "__main__":
    main()
