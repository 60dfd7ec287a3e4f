"""Latency and throughput of POST /predict against the raw Keras forward pass of the same model.

    .venv/bin/python -m benchmarks.predict [--requests 300] [--duration 20]

Starts the service (API + one worker, SQLite, embedded broker) on loopback, trains a
MobileNetV2 bottleneck model (160 px) on part of cats_vs_dogs_small through the API, then:
  1. raw forward: the downloaded `.keras` model in this process, one pre-resized image, as a
     traced graph (what the service runs) and with `model.predict_on_batch`;
  2. service latency: one client, sequential POST /predict of one JPEG photo (p50, p99);
  3. throughput: 1, 4 and 16 concurrent clients (threads, keep-alive), fixed duration each.
Writes the "predict" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import SHARED, live_service, machine, write_section

IMAGE_SIZE = 160
CLIENTS = (1, 4, 16)


def small_dataset_zip(target: Path, per_class: int = 60) -> None:
    root = SHARED / "data" / "cats_vs_dogs_small"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for split, count in (("train", per_class), ("validation", per_class // 3)):
            for label in ("cats", "dogs"):
                for image in sorted((root / split / label).iterdir())[:count]:
                    archive.write(image, f"{split}/{label}/{image.name}")


def train_model(base: str, work: Path, headers: dict[str, str]) -> None:
    archive = work / "bench.zip"
    small_dataset_zip(archive)
    with archive.open("rb") as handle:
        dataset = httpx.post(f"{base}/datasets", files={"file": handle}, data={"name": "bench"},
                             timeout=600, headers=headers).json()  # fmt: skip
    job = httpx.post(f"{base}/jobs", json={
        "dataset_id": dataset["id"], "method": "bottleneck", "base_model": "mobilenet_v2",
        "image_size": IMAGE_SIZE, "epochs": 3, "model_name": "bench",
    }, timeout=60, headers=headers).json()  # fmt: skip
    while (state := httpx.get(f"{base}/jobs/{job['id']}", timeout=30,
                              headers=headers).json())["status"] not in {
        "succeeded", "failed", "cancelled"
    }:  # fmt: skip
        time.sleep(1)
    if state["status"] != "succeeded":
        raise RuntimeError(f"training the benchmark model failed: {state['error']}")
    deadline = time.monotonic() + 120
    while httpx.get(f"{base}/v2/models/bench/ready", timeout=60,
                    headers=headers).status_code != 200:  # fmt: skip
        if time.monotonic() > deadline:
            raise RuntimeError("the model was not loaded")
        time.sleep(0.5)


def raw_forward_ms(
    base: str, work: Path, photo: bytes, runs: int, headers: dict[str, str]
) -> dict[str, float]:
    """Median milliseconds of the forward pass alone, in this process, on one image."""
    import keras
    import tensorflow as tf

    import app.ml.layers  # noqa: F401  (custom layers)
    from app.ml.data import resize_pixels
    from app.ml.images import decode_image, image_to_array

    path = work / "bench.keras"
    download = httpx.get(f"{base}/models/bench/versions/1/download", timeout=60, headers=headers)
    path.write_bytes(download.content)
    model = keras.saving.load_model(path, compile=False)
    pixels = resize_pixels(
        image_to_array(decode_image(photo, max_pixels=10**8).image), image_size=IMAGE_SIZE
    )[None]
    graph = tf.function(lambda x: model(x, training=False))
    tensor = tf.convert_to_tensor(pixels)

    def median_ms(call) -> float:
        for _ in range(20):
            call()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    return {
        "graph": median_ms(lambda: np.asarray(graph(tensor))),
        "predict_on_batch": median_ms(lambda: model.predict_on_batch(pixels)),
    }


def post_photo(client: httpx.Client, base: str, photo: bytes) -> int:
    return client.post(f"{base}/predict", files={"file": ("photo.jpg", photo)}).status_code


def latency(base: str, photo: bytes, requests: int, headers: dict[str, str]) -> dict[str, float]:
    times, errors = [], 0
    with httpx.Client(timeout=60, headers=headers) as client:
        for _ in range(20):
            post_photo(client, base, photo)
        for _ in range(requests):
            started = time.perf_counter()
            errors += post_photo(client, base, photo) != 200
            times.append(time.perf_counter() - started)
    times.sort()
    return {
        "p50": times[len(times) // 2] * 1000,
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
        "errors": errors,
        "requests": requests,
    }


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
                status = post_photo(client, base, photo)
                times[index].append(time.perf_counter() - started)
                counts[index] += 1
                errors[index] += status != 200

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="sequential latency requests")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per client count")
    args = parser.parse_args()
    photo_path = sorted((SHARED / "data" / "cats_vs_dogs_small" / "test" / "cats").iterdir())[0]
    photo = photo_path.read_bytes()

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        work = Path(tmp)
        with live_service(work / "var", with_worker=True,
                          pretrained_weights_dir=str(SHARED / "weights"),
                          model_refresh_seconds="1",
                          # measure the service, not the per-key rate limit
                          predict_rate_per_second="1000000", predict_burst="1000000",
                          ) as live:  # fmt: skip
            base, headers = live.base, live.headers
            train_model(base, work, headers)
            raw = raw_forward_ms(base, work, photo, runs=args.requests, headers=headers)
            print("raw forward ms", raw, flush=True)
            single = latency(base, photo, args.requests, headers)
            print("latency", single, flush=True)
            loads = [throughput(base, photo, n, args.duration, headers) for n in CLIENTS]
            for row in loads:
                print("throughput", row, flush=True)

    from PIL import Image

    with Image.open(photo_path) as image:
        photo_size = f"{image.width}x{image.height}"
    raw_ms = raw["graph"]
    limit = 1.3 * raw_ms + 10
    speedup = loads[-1]["per_second"] / loads[0]["per_second"]
    errors = single["errors"] + sum(row["errors"] for row in loads)
    lines = [
        "## Prediction latency and throughput (`POST /predict`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, CPU only, with",
        "`.venv/bin/python -m benchmarks.predict`: the service on loopback (uvicorn, SQLite),",
        f"a MobileNetV2 bottleneck model at {IMAGE_SIZE} px trained through the API, one JPEG",
        f"photo ({photo_size}, {len(photo)} bytes) per request as multipart; clients are threads",
        "of the benchmark process (httpx, keep-alive), sharing the 2 cores with the server.",
        "",
        "| measurement | value | target |",
        "| --- | --- | --- |",
        f"| raw Keras forward, 1 image, traced graph (median) | {raw_ms:.1f} ms | - |",
        f"| raw Keras forward, `predict_on_batch` (median) | {raw['predict_on_batch']:.1f} ms"
        " | - |",
        f"| service latency p50, 1 client, {single['requests']} requests | {single['p50']:.1f} ms"
        f" | <= 1.3 x raw + 10 ms = {limit:.1f} ms"
        f" ({'met' if single['p50'] <= limit else '**missed**'}) |",
        f"| service latency p99, 1 client | {single['p99']:.1f} ms | - |",
    ]
    for row in loads:
        lines.append(
            f"| throughput, {row['clients']} client(s), {args.duration:.0f} s |"
            f" {row['per_second']:.1f} images/s (p50 {row['p50']:.0f} ms,"
            f" p99 {row['p99']:.0f} ms) | - |"
        )
    lines += [
        f"| throughput 16 clients / 1 client | {speedup:.2f}x | >= 1.5x"
        f" ({'met' if speedup >= 1.5 else '**missed**'}) |",
        f"| errors (non-200 answers) | {errors} | 0 ({'met' if errors == 0 else '**missed**'}) |",
    ]
    body = "\n".join(lines) + "\n"
    write_section("predict", body)
    print(body)


if __name__ == "__main__":
    main()
