"""float32 against int8 serving, on one model in one run (part of `benchmarks.predict`).

    .venv/bin/python -m benchmarks.predict --only int8 [--requests 300]

Trains a MobileNetV2 bottleneck model (160 px) on flowers_small through the API, with the
worker building its int8 ONNX export (static QDQ) and checking it on the test split. Then, with
the service stopped, in this process: both ONNX files run by ONNX Runtime on the CPU, each
measurement alternating between the two so the machine's noise falls on both alike:
  1. one pre-resized image, median ms;
  2. batches of 32 test images, images/s;
  3. accuracy of each on the whole test split, and their top-1 agreement;
  4. RSS of a fresh process after loading the API's model cache in each precision and
     running a batch of 32.
Then the API alone: POST /predict with one photo, precision=float32 and precision=int8 in
turn (a lean client), p50 of each. Writes the "predict-int8" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import (
    SHARED,
    download_version,
    live_service,
    machine,
    memory_kb,
    write_section,
)

IMAGE_SIZE = 160
BATCH = 32
SET = "flowers_small"
NAME = "bench-int8"
ROUNDS = 15  # alternations of the two models per measurement
# The bar for making int8 worth serving.
TARGET_SPEED_UP, TARGET_LOSS_POINTS = 1.5, 1.0


def dataset_zip(target: Path) -> list[tuple[Path, str]]:
    """The set's train, validation and test folders as one zip; returns the test photos with
    their labels."""
    root = SHARED / "data" / SET
    tests = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for split in ("train", "validation", "test"):
            for folder in sorted(p for p in (root / split).iterdir() if p.is_dir()):
                for image in sorted(folder.iterdir()):
                    archive.write(image, f"{split}/{folder.name}/{image.name}")
                    if split == "test":
                        tests.append((image, folder.name))
    return tests


def train(base: str, headers: dict[str, str], archive: Path) -> dict[str, Any]:
    """Train the model and wait until the worker has built and checked its int8 export;
    returns that export's row (with the check's figures)."""
    with archive.open("rb") as handle:
        dataset = httpx.post(
            f"{base}/datasets",
            files={"file": handle},
            data={"name": NAME},
            timeout=600,
            headers=headers,
        ).json()
    job = httpx.post(
        f"{base}/jobs",
        json={
            "dataset_id": dataset["id"],
            "method": "bottleneck",
            "base_model": "mobilenet_v2",
            "image_size": IMAGE_SIZE,
            "model_name": NAME,
        },
        timeout=60,
        headers=headers,
    ).json()
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        version = httpx.get(f"{base}/models/{NAME}/versions/1", timeout=30, headers=headers)
        if version.status_code == 200:
            built = [e for e in version.json()["exports"] if e["format"] == "onnx_int8"]
            if built and built[0]["status"] in {"ready", "failed"}:
                if built[0]["status"] == "failed":
                    raise RuntimeError(f"the int8 export failed: {built[0]['error']}")
                return dict(built[0])
        state = httpx.get(f"{base}/jobs/{job['id']}", timeout=30, headers=headers).json()
        if state["status"] in {"failed", "cancelled"}:
            raise RuntimeError(f"training failed: {state['error']}")
        time.sleep(2)
    raise RuntimeError("the int8 export was not built in time")


def float_model(base: str, headers: dict[str, str], work: Path) -> tuple[Path, list[str]]:
    """The float ONNX model and the version's classes in its output order (from its bundle)."""
    bundle = download_version(base, headers, NAME, work / "float.zip", format="onnx", bundle="true")
    with zipfile.ZipFile(bundle) as archive:
        (model_name,) = [n for n in archive.namelist() if n.endswith(".onnx")]
        classes = json.loads(archive.read("labels.json"))["classes"]
        target = work / "float.onnx"
        target.write_bytes(archive.read(model_name))
    return target, list(classes)


def _alternating(calls: dict[str, Callable[[], Any]], repeat: int) -> dict[str, list[float]]:
    """Seconds of each call, `repeat` times per round, the calls taking turns each round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        for _ in range(3):
            call()
    for _ in range(ROUNDS):
        for name, call in calls.items():
            for _ in range(repeat):
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
    return times


def raw(
    float_file: Path, int8_file: Path, tests: list[tuple[Path, str]], classes: list[str]
) -> dict[str, Any]:
    from app.ml.data import resize_pixels
    from app.ml.export import INPUT_NAME, onnx_session
    from app.ml.images import decode_image, image_to_array

    sessions = {"float32": onnx_session(float_file), "int8": onnx_session(int8_file)}
    pixels = np.stack(
        [
            resize_pixels(
                image_to_array(decode_image(path.read_bytes(), max_pixels=10**8).image),
                image_size=IMAGE_SIZE,
            )
            for path, _ in tests
        ]
    )
    truth = np.array([classes.index(label) for _, label in tests])

    def run(name: str, x: np.ndarray) -> np.ndarray:
        return np.asarray(sessions[name].run(None, {INPUT_NAME: x})[0])

    one, batch = pixels[:1], pixels[:BATCH]
    single = _alternating({n: (lambda n=n: run(n, one)) for n in sessions}, repeat=20)
    batched = _alternating({n: (lambda n=n: run(n, batch)) for n in sessions}, repeat=2)
    answers = {
        name: np.concatenate(
            [run(name, pixels[i : i + BATCH]).argmax(axis=1) for i in range(0, len(pixels), BATCH)]
        )
        for name in sessions
    }
    return {
        "single_ms": {n: statistics.median(t) * 1000 for n, t in single.items()},
        "batch_per_second": {n: BATCH / statistics.median(t) for n, t in batched.items()},
        "accuracy": {n: float(np.mean(a == truth)) for n, a in answers.items()},
        "agreement": float(np.mean(answers["float32"] == answers["int8"])),
        "images": len(tests),
        "sizes": {"float32": float_file.stat().st_size, "int8": int8_file.stat().st_size},
    }


def memory_probe(precision: str) -> None:
    """(Run in a fresh process on the benchmark's data directory.) RSS before and after the
    API's model cache loads the version in `precision` and runs a batch. Prints one JSON line."""
    import gc

    import app.main  # noqa: F401  (everything the API process imports)
    from app.db.models import ModelVersion
    from app.db.session import session_scope
    from app.services.inference import ModelCache
    from app.services.model_versions import VersionRef

    with session_scope() as session:
        (ref,) = [VersionRef.of(row) for row in session.query(ModelVersion)]
    cache = ModelCache(capacity=2, max_batch=BATCH)
    gc.collect()
    before = memory_kb(os.getpid(), "VmRSS") / 1024
    classifier = cache.get(ref, precision=precision)
    classifier.forward(np.zeros((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32))
    gc.collect()
    after = memory_kb(os.getpid(), "VmRSS") / 1024
    print(json.dumps({"runtime": classifier.runtime.value, "before": before, "after": after}))


def memory(var: Path, precision: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMALLVISION_")}
    env.update(SMALLVISION_DATA_DIR=str(var))
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.predict", "--int8-memory-probe", precision],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()[-1]
    return dict(json.loads(output))


def served(var: Path, photo: bytes, requests: int) -> dict[str, Any]:
    """p50 of POST /predict in each precision, the two taking turns, one lean client."""
    import http.client
    from urllib.parse import urlsplit

    with live_service(
        var,
        model_refresh_seconds="3600",
        predict_rate_per_second="1000000",
        predict_burst="1000000",
    ) as live:
        address = urlsplit(live.base)
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=60)
        boundary = "smallvision-benchmark-boundary"

        def body(precision: str) -> bytes:
            fields = {"model": NAME, "precision": precision}
            parts = [
                f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                for k, v in fields.items()
            ]
            return b"".join(
                [
                    *parts,
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    'filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode(),
                    photo,
                    f"\r\n--{boundary}--\r\n".encode(),
                ]
            )

        bodies = {p: body(p) for p in ("float32", "int8")}
        runtimes: dict[str, str] = {}

        def post(precision: str) -> None:
            connection.request(
                "POST",
                "/predict",
                body=bodies[precision],
                headers={
                    **live.headers,
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
            )
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {answer[:300]!r}")
            runtimes[precision] = str(response.getheader("X-Model-Runtime"))

        try:
            times = _alternating(
                {p: (lambda p=p: post(p)) for p in bodies}, repeat=max(1, requests // ROUNDS)
            )
        finally:
            connection.close()
    if runtimes != {"float32": "onnxruntime", "int8": "onnxruntime_int8"}:
        raise RuntimeError(f"unexpected runtimes answered: {runtimes}")
    return {p: statistics.median(t) * 1000 for p, t in times.items()}


def report(measured: dict[str, Any], check: dict[str, Any], api: dict[str, float]) -> str:
    single, batch = measured["single_ms"], measured["batch_per_second"]
    accuracy, rss = measured["accuracy"], measured["memory"]
    speed_up = batch["int8"] / batch["float32"]
    loss = (accuracy["float32"] - accuracy["int8"]) * 100
    pays = speed_up >= TARGET_SPEED_UP and loss <= TARGET_LOSS_POINTS
    verdict = (
        "int8 pays on this CPU: a version can serve it (`PUT .../serving`), but it stays opt-in"
        if pays
        else "int8 does not meet the bar on this CPU, so float32 stays the default"
    )
    lines = [
        "## Serving int8: the int8 ONNX export against the float model",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, CPU only, with",
        "`.venv/bin/python -m benchmarks.predict --only int8`: a MobileNetV2 bottleneck",
        f"model at {IMAGE_SIZE} px trained on {SET} through the API; the worker built its int8",
        "ONNX export (static QDQ, per-channel, calibrated on training images) and checked it.",
        "Both files run by ONNX Runtime on the CPU (default threads), the two alternating in",
        f"{ROUNDS} rounds per measurement; accuracy on the whole test split",
        f"({measured['images']} photos).",
        "",
        "| measurement | float32 | int8 | int8 / float32 | target |",
        "| --- | --- | --- | --- | --- |",
        f"| file size | {measured['sizes']['float32'] / 1e6:.1f} MB"
        f" | {measured['sizes']['int8'] / 1e6:.1f} MB"
        f" | {measured['sizes']['int8'] / measured['sizes']['float32']:.2f} | - |",
        f"| 1 image, median | {single['float32']:.2f} ms | {single['int8']:.2f} ms"
        f" | {single['int8'] / single['float32']:.2f} | - |",
        f"| batches of {BATCH}, throughput | {batch['float32']:.0f} images/s"
        f" | {batch['int8']:.0f} images/s | {speed_up:.2f}x"
        f" | >= {TARGET_SPEED_UP}x ({'met' if speed_up >= TARGET_SPEED_UP else '**missed**'}) |",
        f"| test accuracy | {accuracy['float32']:.4f} | {accuracy['int8']:.4f}"
        f" | {-loss:+.1f} points"
        f" | <= {TARGET_LOSS_POINTS} point lost ({'met' if loss <= TARGET_LOSS_POINTS else '**missed**'}) |",
        f"| top-1 agreement with float32 | - | {measured['agreement']:.4f} | - | - |",
        f"| API process RSS after loading and one batch | {rss['float32']['after']:.0f} MiB"
        f" (+{rss['float32']['after'] - rss['float32']['before']:.0f})"
        f" | {rss['int8']['after']:.0f} MiB"
        f" (+{rss['int8']['after'] - rss['int8']['before']:.0f}) | - | - |",
        f"| POST /predict p50, one photo, lean client | {api['float32']:.1f} ms"
        f" | {api['int8']:.1f} ms | {api['int8'] / api['float32']:.2f} | - |",
        "",
        f"The worker's own check at export time: accuracy {check['accuracy']:.4f} against",
        f"{check['float_accuracy']:.4f} on {check['images']} {check['evaluated_on']} images,",
        f"agreement {check['agreement']:.4f}, degraded: {'yes' if check['degraded'] else 'no'}.",
        f"{verdict}.",
    ]
    return "\n".join(lines) + "\n"


def run(requests: int) -> str:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="predict-int8-bench-") as tmp:
        work, var = Path(tmp), Path(tmp) / "var"
        tests = dataset_zip(work / "set.zip")
        with live_service(
            var,
            with_worker=True,
            pretrained_weights_dir=str(SHARED / "weights"),
            edge_export_formats="onnx_int8",
            model_refresh_seconds="1",
        ) as live:
            export = train(live.base, live.headers, work / "set.zip")
            float_file, classes = float_model(live.base, live.headers, work)
            int8_file = download_version(
                live.base, live.headers, NAME, work / "int8.onnx", format="onnx_int8"
            )
        measured = raw(float_file, int8_file, tests, classes)
        print("raw", measured, flush=True)
        measured["memory"] = {p: memory(var, p) for p in ("float32", "int8")}
        print("memory", measured["memory"], flush=True)
        api = served(var, tests[0][0].read_bytes(), requests)
        print("api p50 ms", api, flush=True)
    body = report(measured, export["report"], api)
    write_section("predict-int8", body)
    return body


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="float32 against int8 serving (the same as `benchmarks.predict --only int8`)"
    )
    parser.add_argument("--requests", type=int, default=300, help="POST /predict per precision")
    print(run(parser.parse_args().requests))


if __name__ == "__main__":
    main()
