"""The formats for devices on every shared set: size on disk, accuracy on the test split and
agreement with the float model (the worker's own check, by each format's runtime), and
single-image latency on this CPU as a ratio to the float ONNX model in the same loop.

    .venv/bin/python -m benchmarks.edge [--sets NAME ...] [--latency-images 60]

Each set (its train/validation/test folders as they are) is uploaded to a live service with
one worker and trained with the default request; the worker then builds tflite, tflite_fp16,
tflite_int8 and onnx_int8 and checks each. The files are downloaded and timed here, one
thread each, the formats interleaved image by image. Writes the "edge" section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import PROJECT_ROOT, SHARED, live_service, machine, write_section

DATA = SHARED / "data"
SETS = ["car_vs_minibus_tiny", "caltech101_8class", "flowers_small", "cats_vs_dogs_small"]
EDGE = ["tflite", "tflite_fp16", "tflite_int8", "onnx_int8"]
RUNTIME = {"onnx": "onnxruntime", "onnx_int8": "onnxruntime"}


def _zip(name: str, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted((DATA / name).glob("*/*/*")):
            if path.parent.parent.name in {"train", "validation", "test"}:
                archive.write(path, path.relative_to(DATA / name))
    return target


def _wait(get: Any, done: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = get()
        if done(value):
            return value
        time.sleep(3)
    raise TimeoutError(what)


def _train(base: str, headers: dict[str, str], name: str, work: Path) -> dict[str, Any]:
    with _zip(name, work / f"{name}.zip").open("rb") as handle:
        dataset = httpx.post(
            f"{base}/datasets",
            files={"file": handle},
            data={"name": name},
            headers=headers,
            timeout=600,
        ).json()
    job = httpx.post(
        f"{base}/jobs",
        json={"dataset_id": dataset["id"], "model_name": name},
        headers=headers,
        timeout=60,
    ).json()
    finished = _wait(
        lambda: httpx.get(f"{base}/jobs/{job['id']}", headers=headers, timeout=30).json(),
        lambda j: j["status"] in {"succeeded", "failed", "cancelled"},
        timeout=7200,
        what=f"the job on {name}",
    )
    if finished["status"] != "succeeded":
        raise RuntimeError(f"{name}: {finished.get('error')}")
    return finished


def _exports(base: str, headers: dict[str, str], name: str) -> dict[str, dict[str, Any]]:
    def current() -> dict[str, dict[str, Any]]:
        version = httpx.get(f"{base}/models/{name}/versions/1", headers=headers, timeout=30)
        return {e["format"]: e for e in version.json()["exports"]}

    return _wait(  # type: ignore[no-any-return]
        current,
        lambda found: all(found.get(f, {}).get("status") in {"ready", "failed"} for f in EDGE),
        timeout=3600,
        what=f"the exports of {name}",
    )


def _runner(fmt: str, path: Path) -> Any:
    from app.ml.edge import LiteRtModel, OnnxModel

    if RUNTIME.get(fmt) == "onnxruntime":
        return OnnxModel(path, threads=1)
    return LiteRtModel(path, threads=1)


def _latencies(
    base: str, headers: dict[str, str], name: str, work: Path, count: int, size: int
) -> dict[str, float]:
    """Median single-image milliseconds per format (onnx: the float reference), the formats
    run one after another on each image."""
    from app.ml.images import decode_image, image_to_array

    runners = {}
    for fmt in ["onnx", *EDGE]:
        answer = httpx.get(
            f"{base}/models/{name}/versions/1/download",
            params={"format": fmt, "allow_degraded": "true"},
            headers=headers,
            timeout=120,
        )
        answer.raise_for_status()
        path = work / f"{name}.{fmt}"
        path.write_bytes(answer.content)
        runners[fmt] = _runner(fmt, path)
    photos = sorted((DATA / name / "test").glob("*/*"))
    picks = [photos[int(i)] for i in np.linspace(0, len(photos) - 1, count).round()]
    images = [
        image_to_array(
            decode_image(p.read_bytes(), max_pixels=10**8, target_size=size).image
        ).astype(np.float32)
        for p in picks
    ]
    for runner in runners.values():
        runner.forward(images[0])  # warmed up
    times: dict[str, list[float]] = {fmt: [] for fmt in runners}
    for pixels in images:
        for fmt, runner in runners.items():
            started = time.perf_counter()
            runner.forward(pixels)
            times[fmt].append((time.perf_counter() - started) * 1000)
    return {fmt: statistics.median(values) for fmt, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=SETS)
    parser.add_argument("--latency-images", type=int, default=60)
    parser.add_argument("--work", type=Path, default=PROJECT_ROOT / "var" / "benchmarks" / "edge")
    args = parser.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        live_service(
            args.work / "var",
            with_worker=True,
            pretrained_weights_dir=str(SHARED / "weights"),
            allow_weights_download="false",
            edge_export_formats=",".join(EDGE),
        ) as live,
    ):
        for name in args.sets:
            job = _train(live.base, live.headers, name, Path(tmp))
            exports = _exports(live.base, live.headers, name)
            size = int(job["parameters"]["image_size"])
            latency = _latencies(
                live.base, live.headers, name, Path(tmp), args.latency_images, size
            )
            onnx_size = (args.work / "var").glob(f"models/{name}/v1/model.onnx")
            row = {
                "set": name,
                "method": job["result"]["method"],
                "float_test_accuracy": job["result"]["evaluation"]["accuracy"],
                "onnx_bytes": next(onnx_size).stat().st_size,
                "onnx_ms": latency["onnx"],
                "formats": {
                    fmt: {
                        "status": exports[fmt]["status"],
                        "error": exports[fmt]["error"],
                        **(exports[fmt]["report"] or {}),
                        "ms": latency.get(fmt),
                    }
                    for fmt in EDGE
                },
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    lines = [
        "## Formats for devices: size, accuracy and speed of each export",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, CPU only, with",
        f"`.venv/bin/python -m benchmarks.edge --sets {' '.join(args.sets)}`: each set trained",
        "with the default request (one seed), then every format built and checked by the",
        "worker with its own runtime (LiteRT, ONNX Runtime) on the set's test split beside the",
        "float model. Accuracy: the export's on the test split (the float model's in",
        "brackets); agreement: the share of test images given the float model's answer.",
        f"Latency: median single-image forward over {args.latency_images} test photos, one",
        "thread, as a ratio to the float ONNX model timed in the same loop (below 1: faster).",
        "",
        "| set | format | size | vs ONNX float size | test accuracy (float) | agreement | "
        "latency vs ONNX float | degraded |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['set']} | onnx (float, {row['method']}) | {row['onnx_bytes'] / 1e6:.1f} MB "
            f"| 1.00 | {row['float_test_accuracy']:.3f} | 1.000 | 1.00 "
            f"({row['onnx_ms']:.1f} ms) | |"
        )
        for fmt, check in row["formats"].items():
            if check["status"] != "ready":
                lines.append(f"| {row['set']} | {fmt} | failed: {check['error']} | | | | | |")
                continue
            lines.append(
                f"| {row['set']} | {fmt} | {check['size_bytes'] / 1e6:.1f} MB | "
                f"{check['size_bytes'] / row['onnx_bytes']:.2f} | {check['accuracy']:.3f} "
                f"({check['float_accuracy']:.3f}) | {check['agreement']:.3f} | "
                f"{check['ms'] / row['onnx_ms']:.2f} | {'yes' if check['degraded'] else 'no'} |"
            )
    write_section("edge", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
