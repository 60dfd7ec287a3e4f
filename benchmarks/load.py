"""A bounded load test: 32 clients of mixed prediction and status traffic for 60 s.

    .venv/bin/python -m benchmarks.load [--clients 32] [--duration 60] [--warmup 10]

Starts the service (API + one worker) on loopback, trains a small MobileNetV2 bottleneck
model through the API, then runs the clients (threads, keep-alive, one train+predict key of
the model's owner): 70% POST /predict with a JPEG photo, 30% status reads (GET /jobs/{id}, GET /models,
GET /models/{name}/versions). Reports requests/s, p50/p99 per kind, every non-2xx status, and
the API process's memory (RSS) after warm-up and at its peak afterwards. Writes the "load"
section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks.common import (
    SHARED,
    app_cli,
    live_service,
    machine,
    memory_kb,
    write_section,
)
from benchmarks.predict import train_versions

PREDICT_SHARE = 0.7


def api_pid(launcher_pid: int) -> int:
    """The uvicorn child of `app.cli run`."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    for pid in children:
        if "uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return int(pid)
    raise RuntimeError("no uvicorn process under the launcher")


def make_key(data_dir: Path) -> str:
    """A train+predict key of the owner that trained the model (the clients' key)."""
    return app_cli(
        data_dir,
        "keys",
        "create",
        "--name",
        "load",
        "--owner",
        "benchmark",
        "--scopes",
        "train,predict",
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000 if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0)
    # Long enough for the biggest micro-batches (and their buffers) to have happened once.
    parser.add_argument("--warmup", type=float, default=20.0)
    args = parser.parse_args()
    photo = sorted((SHARED / "data" / "cats_vs_dogs_small" / "test" / "dogs").iterdir())[0]
    photo_bytes = photo.read_bytes()

    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        work = Path(tmp)
        with live_service(
            work / "var",
            with_worker=True,
            pretrained_weights_dir=str(SHARED / "weights"),
            predict_rate_per_second="1000000",
            predict_burst="1000000",
        ) as live:
            base, admin = live.base, live.headers
            train_versions(base, work, admin, versions=1)
            job_id = httpx.get(f"{base}/jobs", headers=admin, timeout=30).json()[0]["id"]
            pid = api_pid(live.process.pid)
            key = make_key(work / "var")

            latencies: dict[str, list[float]] = {"predict": [], "status": []}
            statuses: Counter[str] = Counter()
            lock = threading.Lock()
            start = time.monotonic()
            measure_from = start + args.warmup
            stop = measure_from + args.duration
            memory = {"after_warmup": 0, "peak": 0}
            quarters: list[int] = []

            def client(index: int) -> None:
                rng = random.Random(index)  # noqa: S311  (traffic mix, not secrets)
                headers = {"Authorization": f"Bearer {key}"}
                with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
                    while (now := time.monotonic()) < stop:
                        kind = "predict" if rng.random() < PREDICT_SHARE else "status"
                        started = time.perf_counter()
                        try:
                            if kind == "predict":
                                response = http.post(
                                    "/predict", files={"file": (photo.name, photo_bytes)}
                                )
                            else:
                                path = rng.choice(
                                    [f"/jobs/{job_id}", "/models", "/models/bench/versions"]
                                )
                                response = http.get(path)
                            outcome = str(response.status_code)
                        except httpx.TransportError as exc:  # counted, never hidden
                            outcome = f"transport error ({type(exc).__name__})"
                        elapsed = time.perf_counter() - started
                        if now >= measure_from:
                            with lock:
                                latencies[kind].append(elapsed)
                                statuses[f"{kind} {outcome}"] += 1

            def sample_memory() -> None:
                while time.monotonic() < stop:
                    rss = memory_kb(pid, "VmRSS")
                    if time.monotonic() < measure_from:
                        memory["after_warmup"] = rss
                    else:
                        memory["peak"] = max(memory["peak"], rss)
                        elapsed = time.monotonic() - measure_from
                        if elapsed >= len(quarters) * args.duration / 4:
                            quarters.append(rss)
                    time.sleep(0.2)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            threads.append(threading.Thread(target=sample_memory))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    total = sum(len(values) for values in latencies.values())
    server_errors = sum(count for key, count in statuses.items() if key.split()[1][0] == "5")
    transport_errors = sum(count for key, count in statuses.items() if "transport" in key)
    growth = (memory["peak"] - memory["after_warmup"]) / memory["after_warmup"] * 100
    rss_path = " -> ".join(f"{rss / 1024:.0f} MB" for rss in quarters)
    lines = [
        "## Load: mixed prediction and status traffic",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, CPU only, with",
        f"`.venv/bin/python -m benchmarks.load --clients {args.clients} --duration"
        f" {args.duration:g}`: the service on loopback (API + one idle worker, SQLite), a",
        "MobileNetV2 bottleneck model (160 px); client threads in the benchmark process share the",
        f"2 cores with the server. {PREDICT_SHARE:.0%} of requests are POST /predict with one JPEG,",
        "the rest GET /jobs/{id}, /models and /models/{name}/versions, all with one",
        f"train+predict key. Counted after {args.warmup:g} s of warm-up.",
        "",
        "| measurement | value | target |",
        "| --- | --- | --- |",
        f"| requests in {args.duration:g} s | {total} ({total / args.duration:.1f}/s) | - |",
        f"| predict p50 / p99 | {percentile(latencies['predict'], 0.5):.0f} ms /"
        f" {percentile(latencies['predict'], 0.99):.0f} ms | p99 reported |",
        f"| status p50 / p99 | {percentile(latencies['status'], 0.5):.0f} ms /"
        f" {percentile(latencies['status'], 0.99):.0f} ms | p99 reported |",
        f"| answers by kind and status | {', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))}"
        " | - |",
        f"| 5xx answers | {server_errors} | 0 ({'met' if server_errors == 0 else '**missed**'}) |",
        f"| connection errors | {transport_errors} | 0"
        f" ({'met' if transport_errors == 0 else '**missed**'}) |",
        f"| API RSS during the run (every quarter) | {rss_path} | - |",
        f"| API RSS after warm-up -> peak | {memory['after_warmup'] / 1024:.0f} MB ->"
        f" {memory['peak'] / 1024:.0f} MB ({growth:+.1f}%) | growth <= 10%"
        f" ({'met' if growth <= 10 else '**missed**'}) |",
    ]
    body = "\n".join(lines) + "\n"
    write_section("load", body)
    print(body)


if __name__ == "__main__":
    main()
