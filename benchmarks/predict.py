"""Prediction speed and memory, Keras against ONNX Runtime, on one model in one run.

    .venv/bin/python -m benchmarks.predict [--requests 300] [--duration 20]

Starts the service (API + one worker, SQLite, embedded broker) on loopback and trains three
versions of a MobileNetV2 bottleneck model (160 px) on part of cats_vs_dogs_small through the
API (each saved with its ONNX export). With the service stopped, in this process:
  1. raw forward passes of the downloaded `.keras` model (a traced graph: what the Keras path
     runs) and of its `.onnx` export (ONNX Runtime, CPU): one pre-resized image (median ms)
     and batches of 32 (images/s);
  2. the frozen base as a feature extractor (what training runs over every image) in both
     runtimes, batches of 32 at 224 px (images/s).
Then the API alone, once with SERVING_RUNTIME=keras and once with onnxruntime:
  3. single-client latency of POST /predict with one JPEG photo (p50, p99);
  4. throughput at 1, 4 and 16 concurrent clients (threads, keep-alive), fixed duration each;
  5. the API's RSS with one and two versions loaded (the cache holds two), then while other
     versions are loaded and evicted in turn (nine evictions).
Writes the "predict" section of docs/BENCHMARKS.md. Then (or alone with `--only int8`)
benchmarks/predict_int8.py: float32 against the int8 ONNX export, in its own section.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import predict_int8
from benchmarks.common import (
    SHARED,
    download_version,
    live_service,
    machine,
    memory_kb,
    write_section,
)

IMAGE_SIZE = 160
CLIENTS = (1, 4, 16)
VERSIONS = 3
RUNTIMES = ("keras", "onnxruntime")
BATCH = 32


def small_dataset_zip(target: Path, per_class: int = 60) -> None:
    root = SHARED / "data" / "cats_vs_dogs_small"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for split, count in (("train", per_class), ("validation", per_class // 3)):
            for label in ("cats", "dogs"):
                for image in sorted((root / split / label).iterdir())[:count]:
                    archive.write(image, f"{split}/{label}/{image.name}")


def train_versions(
    base: str, work: Path, headers: dict[str, str], *, versions: int = VERSIONS
) -> None:
    """`versions` versions of model "bench" (the later jobs reuse the cached features), and
    wait until the active one answers."""
    archive = work / "bench.zip"
    small_dataset_zip(archive)
    with archive.open("rb") as handle:
        dataset = httpx.post(
            f"{base}/datasets",
            files={"file": handle},
            data={"name": "bench"},
            timeout=600,
            headers=headers,
        ).json()
    for seed in range(versions):
        job = httpx.post(
            f"{base}/jobs",
            json={
                "dataset_id": dataset["id"],
                "method": "bottleneck",
                "base_model": "mobilenet_v2",
                "image_size": IMAGE_SIZE,
                "epochs": 3,
                "model_name": "bench",
                "seed": seed,
            },
            timeout=60,
            headers=headers,
        ).json()
        while (state := httpx.get(f"{base}/jobs/{job['id']}", timeout=30, headers=headers).json())[
            "status"
        ] not in {"succeeded", "failed", "cancelled"}:
            time.sleep(1)
        if state["status"] != "succeeded":
            raise RuntimeError(f"training the benchmark model failed: {state['error']}")
        if "error" in (exported := state["result"].get("exports", {}).get("onnx", {})):
            raise RuntimeError(f"the ONNX export failed: {exported['error']}")
    deadline = time.monotonic() + 120
    while (
        httpx.get(f"{base}/v2/models/bench/ready", timeout=60, headers=headers).status_code != 200
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the model was not loaded")
        time.sleep(0.5)


def median_ms(call: Callable[[], Any], runs: int) -> float:
    for _ in range(20):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def images_per_second(call: Callable[[], Any], images: int, seconds: float = 10.0) -> float:
    call()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        done += images
    return done / (time.perf_counter() - started)


def raw_forward(keras_file: Path, onnx_file: Path, photo: bytes, runs: int) -> dict[str, Any]:
    """The forward pass alone, in this process: one image (median ms) and batches (images/s),
    and the largest difference between the two runtimes' answers."""
    import keras
    import tensorflow as tf

    import app.ml.layers  # noqa: F401  (custom layers)
    from app.ml.data import resize_pixels
    from app.ml.export import INPUT_NAME, onnx_session
    from app.ml.images import decode_image, image_to_array

    model = keras.saving.load_model(keras_file, compile=False)
    pixels = resize_pixels(
        image_to_array(decode_image(photo, max_pixels=10**8).image), image_size=IMAGE_SIZE
    )[None]
    batch = np.repeat(pixels, BATCH, axis=0)
    graph = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)],
    )
    session = onnx_session(onnx_file)

    def keras_run(x: np.ndarray) -> np.ndarray:
        return np.asarray(graph(tf.convert_to_tensor(x)))

    def onnx_run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {INPUT_NAME: x})[0])

    return {
        "keras_ms": median_ms(lambda: keras_run(pixels), runs),
        "onnx_ms": median_ms(lambda: onnx_run(pixels), runs),
        "keras_batch": images_per_second(lambda: keras_run(batch), BATCH),
        "onnx_batch": images_per_second(lambda: onnx_run(batch), BATCH),
        "difference": float(np.max(np.abs(keras_run(batch) - onnx_run(batch)))),
    }


def feature_extraction(work: Path) -> dict[str, float]:
    """Images/s of the frozen MobileNetV2 feature extractor (pooled features and the top
    block's inputs, as training computes them) at 224 px, batches of 32, in both runtimes."""
    import tensorflow as tf
    import tf2onnx

    from app.ml import bases, builders
    from app.ml.export import onnx_session

    spec = bases.BASES[bases.BaseName.MOBILENET_V2]
    weights = bases.find_weights(spec, weights_dir=SHARED / "weights")
    assert weights is not None
    base = builders.frozen_base(spec, image_size=224, weights=weights)
    extractor = builders.feature_extractor(base, spec, image_size=224, with_top_inputs=True)
    signature = [tf.TensorSpec([None, 224, 224, 3], tf.float32, name="pixels")]
    serve = tf.function(lambda x: extractor(x, training=False), input_signature=signature)
    path = work / "extractor.onnx"
    tf2onnx.convert.from_function(serve, input_signature=signature, opset=17, output_path=str(path))
    session = onnx_session(path)
    batch = np.random.default_rng(0).uniform(0, 255, (BATCH, 224, 224, 3)).astype(np.float32)
    return {
        # extractor.predict is what app/ml/features.py runs
        "keras": images_per_second(
            lambda: extractor.predict(batch, batch_size=BATCH, verbose=0), BATCH, 20.0
        ),
        "onnx": images_per_second(lambda: session.run(None, {"pixels": batch}), BATCH, 20.0),
    }


def post_photo(client: httpx.Client, base: str, photo: bytes, version: int | None = None) -> str:
    """The runtime that answered (raises on any status but 200)."""
    form = {"model": "bench", **({"version": str(version)} if version else {})}
    response = client.post(f"{base}/predict", files={"file": ("photo.jpg", photo)}, data=form)
    response.raise_for_status()
    return str(response.headers["X-Model-Runtime"])


def timed(send: Callable[[], str], requests: int) -> dict[str, Any]:
    """p50 and p99 (ms) of `requests` sequential calls of `send` (which returns the runtime
    that answered), after 20 unmeasured ones."""
    for _ in range(20):
        runtime = send()
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        send()
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "runtime": runtime,
        "p50": times[len(times) // 2] * 1000,
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
        "requests": requests,
    }


def latency(base: str, photo: bytes, requests: int, headers: dict[str, str]) -> dict[str, Any]:
    with httpx.Client(timeout=60, headers=headers) as client:
        return timed(lambda: post_photo(client, base, photo), requests)


def lean_latency(base: str, photo: bytes, requests: int, headers: dict[str, str]) -> dict[str, Any]:
    """The same request as `latency`, its multipart body encoded once beforehand and sent
    with http.client on one keep-alive connection: what remains is the service's time (and
    the loopback's), not the client library's, as a load tool like wrk measures it."""
    import http.client
    from urllib.parse import urlsplit

    boundary = "smallvision-benchmark-boundary"
    body = b"".join(
        [
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nbench\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode(),
            photo,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    request_headers = {
        **headers,
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(body)),
    }
    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=60)

    def post() -> str:
        connection.request("POST", "/predict", body=body, headers=request_headers)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {answer[:300]!r}")
        return str(response.getheader("X-Model-Runtime"))

    try:
        return timed(post, requests)
    finally:
        connection.close()


def throughput(
    base: str, photo: bytes, clients: int, duration: float, headers: dict[str, str]
) -> dict[str, float]:
    stop = time.monotonic() + duration
    counts, errors, times = [0] * clients, [0] * clients, [[] for _ in range(clients)]

    def run(index: int) -> None:
        with httpx.Client(timeout=60, headers=headers) as client:
            post_photo(client, base, photo)  # connect outside the measured window
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    post_photo(client, base, photo)
                except httpx.HTTPError:
                    errors[index] += 1
                times[index].append(time.perf_counter() - started)
                counts[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    all_times = sorted(t for per_client in times for t in per_client)
    return {
        "clients": clients,
        "requests": sum(counts),
        "per_second": sum(counts) / elapsed,
        "p50": all_times[len(all_times) // 2] * 1000,
        "p99": all_times[min(len(all_times) - 1, int(len(all_times) * 0.99))] * 1000,
        "errors": sum(errors),
    }


def memory_probe() -> None:
    """(Run in a fresh process on the benchmark's data directory.) The API's model cache with
    room for two versions: RSS with nothing loaded, after loading each of the three versions
    in turn (the third evicts the first), then after six more loads, each evicting one.
    Prints one JSON line."""
    import gc
    import json
    import os

    import app.main  # noqa: F401  (everything the API process imports)
    from app.db.models import ModelVersion
    from app.db.session import session_scope
    from app.services.inference import ModelCache
    from app.services.model_versions import VersionRef

    with session_scope() as session:
        refs = [VersionRef.of(row) for row in session.query(ModelVersion).order_by("version")]
    cache = ModelCache(capacity=2, max_batch=32)
    pixels = np.zeros((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)

    def rss_after(ref: VersionRef | None) -> float:
        if ref is not None:
            cache.get(ref).forward(pixels)  # a full batch: runtime buffers are allocated too
        gc.collect()
        return memory_kb(os.getpid(), "VmRSS") / 1024

    readings = [rss_after(None)] + [rss_after(ref) for ref in refs]
    readings += [rss_after(ref) for ref in refs * 2]
    print(json.dumps({"runtime": cache.get(refs[0]).runtime.value, "rss": readings}))


def memory(var: Path, runtime: str) -> dict[str, float]:
    """memory_probe in a fresh process: MiB with none, one and two versions loaded, per
    version, and after the loads that evicted (seven evictions in all)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SMALLVISION_")}
    env.update(SMALLVISION_DATA_DIR=str(var), SMALLVISION_SERVING_RUNTIME=runtime)
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.predict", "--memory-probe"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()[-1]
    probe = json.loads(output)
    if probe["runtime"] != runtime:
        raise RuntimeError(f"the probe loaded {probe['runtime']}, not {runtime}")
    rss = probe["rss"]
    # The first load also imports the runtime (TensorFlow: most of the Keras path's first
    # load); the second version shows what one more loaded version costs.
    return {
        "none": rss[0],
        "one": rss[1],
        "two": rss[2],
        "per_model": rss[2] - rss[1],
        "evicting": max(rss[3:]),
        "last": rss[-1],
    }


def serve_and_measure(
    var: Path, runtime: str, photo: bytes, args: argparse.Namespace
) -> dict[str, Any]:
    with live_service(
        var,
        serving_runtime=runtime,
        model_cache_size="2",
        model_refresh_seconds="3600",
        # measure the service, not the per-key rate limit
        predict_rate_per_second="1000000",
        predict_burst="1000000",
    ) as live:
        base, headers = live.base, live.headers
        single = latency(base, photo, args.requests, headers)
        lean = lean_latency(base, photo, args.requests, headers)
        for measured in (single, lean):
            if measured["runtime"] != runtime:
                raise RuntimeError(f"{measured['runtime']} answered, not {runtime}")
        print(runtime, "latency", single, "lean client", lean, flush=True)
        loads = [throughput(base, photo, n, args.duration, headers) for n in CLIENTS]
        for row in loads:
            print(runtime, "throughput", row, flush=True)
    rss = memory(var, runtime)
    print(runtime, "memory", rss, flush=True)
    return {"latency": single, "lean": lean, "loads": loads, "memory": rss}


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(
    raw: dict[str, Any],
    features: dict[str, float],
    served: dict[str, dict[str, Any]],
    *,
    photo: str,
    args: argparse.Namespace,
) -> str:
    keras_path, onnx_path = served["keras"], served["onnxruntime"]
    limit = 1.3 * raw["onnx_ms"] + 3
    # The targets are judged on the service's own latency: the lean client's (see `lean_latency`).
    p50 = onnx_path["lean"]["p50"]
    p50_ratio = keras_path["lean"]["p50"] / p50
    busy = onnx_path["loads"][-1]["per_second"] / keras_path["loads"][-1]["per_second"]
    lines = [
        "## Prediction latency, throughput and memory: Keras and ONNX Runtime",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, CPU only, with",
        "`.venv/bin/python -m benchmarks.predict`: one MobileNetV2 bottleneck model at",
        f"{IMAGE_SIZE} px trained through the API (three versions of it for the memory rows),",
        f"its `.keras` file and its ONNX export; one JPEG photo ({photo}) per request as",
        "multipart; clients are threads of the benchmark process (httpx, keep-alive), sharing",
        "the 2 cores with the API (uvicorn, SQLite, no worker running). Single-client latency",
        "is measured twice: with httpx (which encodes the multipart body on every request), and",
        "with a lean client (the body encoded once, sent by http.client on one keep-alive",
        "connection, as a load tool such as wrk does), whose time is the service's and the",
        "loopback's only. The latency targets are judged on the lean client's numbers.",
        "",
        "Raw forward passes (in the benchmark process, the service stopped):",
        "",
        "| forward pass | Keras (traced graph) | ONNX Runtime (CPU) |",
        "| --- | --- | --- |",
        f"| 1 image, median | {raw['keras_ms']:.2f} ms | {raw['onnx_ms']:.2f} ms |",
        f"| batches of {BATCH} | {raw['keras_batch']:.0f} images/s"
        f" | {raw['onnx_batch']:.0f} images/s |",
        f"| feature extraction for training (MobileNetV2, 224 px, batches of {BATCH})"
        f" | {features['keras']:.0f} images/s | {features['onnx']:.0f} images/s |",
        "",
        f"Largest difference between the two runtimes' probabilities: {raw['difference']:.1e}.",
        "",
        "The service (`POST /predict`, one photo per request):",
        "",
        "| measurement | Keras path | ONNX Runtime path | target |",
        "| --- | --- | --- | --- |",
        f"| latency p50, 1 lean client, {args.requests} requests"
        f" | {keras_path['lean']['p50']:.1f} ms | {p50:.1f} ms"
        f" | ONNX <= 1.3 x raw ONNX + 3 ms = {limit:.1f} ms ({_met(p50 <= limit)});"
        f" Keras / ONNX = {p50_ratio:.2f}x >= 2x ({_met(p50_ratio >= 2)}) |",
        f"| latency p99, 1 lean client | {keras_path['lean']['p99']:.1f} ms"
        f" | {onnx_path['lean']['p99']:.1f} ms | - |",
        f"| latency p50, 1 httpx client, {args.requests} requests"
        f" | {keras_path['latency']['p50']:.1f} ms | {onnx_path['latency']['p50']:.1f} ms | - |",
        f"| latency p99, 1 httpx client | {keras_path['latency']['p99']:.1f} ms"
        f" | {onnx_path['latency']['p99']:.1f} ms | - |",
    ]
    for keras_row, onnx_row in zip(keras_path["loads"], onnx_path["loads"], strict=True):
        clients = keras_row["clients"]
        target = (
            f"ONNX / Keras = {busy:.2f}x >= 1.3x ({_met(busy >= 1.3)})" if clients == 16 else "-"
        )
        lines.append(
            f"| throughput, {clients} client(s), {args.duration:.0f} s"
            f" | {keras_row['per_second']:.1f} images/s (p50 {keras_row['p50']:.0f} ms,"
            f" p99 {keras_row['p99']:.0f} ms)"
            f" | {onnx_row['per_second']:.1f} images/s (p50 {onnx_row['p50']:.0f} ms,"
            f" p99 {onnx_row['p99']:.0f} ms) | {target} |"
        )
    errors = {name: sum(row["errors"] for row in path["loads"]) for name, path in served.items()}
    lines.append(
        f"| errors (non-200 answers) | {errors['keras']} | {errors['onnxruntime']}"
        f" | 0 ({_met(not any(errors.values()))}) |"
    )
    lines += [
        "",
        "Memory: the API's model cache (room for two versions) in a fresh process with the",
        "API's imports, RSS in MiB after each load and a batch of 32 through the model; the",
        "three versions are loaded in turn three times, so every load after the second evicts",
        "the least recently used one (seven evictions).",
        "",
        "| runtime | nothing loaded | one version (and the runtime imported) | two versions"
        " | one more version"
        " | highest while evicting | at the end |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, path in served.items():
        rss = path["memory"]
        lines.append(
            f"| {name} | {rss['none']:.0f} | {rss['one']:.0f} | {rss['two']:.0f}"
            f" | {rss['per_model']:.0f} | {rss['evicting']:.0f} | {rss['last']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="sequential latency requests")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per client count")
    # the runtime comes from SMALLVISION_SERVING_RUNTIME, as in the API
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--int8-memory-probe", choices=("float32", "int8"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        choices=("runtimes", "int8"),
        help="runtimes: Keras against ONNX Runtime; int8: float32 against the int8 ONNX "
        "export (default: both)",
    )
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe()
        return
    if args.int8_memory_probe:
        predict_int8.memory_probe(args.int8_memory_probe)
        return
    if args.only != "runtimes":
        print(predict_int8.run(args.requests))
    if args.only == "int8":
        return
    photo_path = sorted((SHARED / "data" / "cats_vs_dogs_small" / "test" / "cats").iterdir())[0]
    photo = photo_path.read_bytes()

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        work, var = Path(tmp), Path(tmp) / "var"
        with live_service(
            var,
            with_worker=True,
            pretrained_weights_dir=str(SHARED / "weights"),
            model_refresh_seconds="1",
        ) as live:
            train_versions(live.base, work, live.headers)
            keras_file = download_version(
                live.base, live.headers, "bench", work / "bench.keras", format="keras"
            )
            onnx_file = download_version(
                live.base, live.headers, "bench", work / "bench.onnx", format="onnx"
            )
        raw = raw_forward(keras_file, onnx_file, photo, runs=args.requests)
        print("raw forward", raw, flush=True)
        features = feature_extraction(work)
        print("feature extraction images/s", features, flush=True)
        served = {runtime: serve_and_measure(var, runtime, photo, args) for runtime in RUNTIMES}

    from PIL import Image

    with Image.open(photo_path) as image:
        size = f"{image.width}x{image.height}, {len(photo)} bytes"
    body = report(raw, features, served, photo=size, args=args)
    write_section("predict", body)
    print(body)


if __name__ == "__main__":
    main()
