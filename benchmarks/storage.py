"""Object storage benchmark: dataset upload, and a first training job's data loading, with
the datasets in an S3 bucket versus the local filesystem, on the same photos.

    .venv/bin/python -m benchmarks.storage [--repeats 3] [--image-size 224]

The bucket is moto's S3 server (`moto[server]`, an in-memory S3 HTTP API written in Python)
on loopback: what it measures is the service's own cost of going through the S3 API (requests,
HTTP, checksums, the local cache), not a real network or a production object store.
Results go to docs/BENCHMARKS.md (section "storage").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks.common import free_port, live_service, machine, write_section
from benchmarks.ingest import build_photos_zip, upload

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "benchmark",
    "AWS_SECRET_ACCESS_KEY": "benchmark-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """moto's standalone S3 server on a free loopback port; yields its URL."""
    port = free_port()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def bucket_settings(endpoint: str) -> dict[str, str]:
    import boto3

    bucket = f"benchmark-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return {
        "storage_backend": "s3",
        "s3_bucket": bucket,
        "s3_endpoint_url": endpoint,
        "s3_region": "us-east-1",
    }


def load_as_a_worker(
    dataset_id: str, *, data_dir: Path, settings: dict[str, str], image_size: int
) -> tuple[float, float]:
    """What a job's first stage does on a worker with an empty cache (its own data folder):
    (seconds to have every image file on local disk, seconds to decode and resize them all)."""
    from app.core.config import get_settings
    from app.ml.data import load_split
    from app.services.datasets import load_manifest, local_images

    for key in [k for k in os.environ if k.startswith("SMALLVISION_")]:
        del os.environ[key]
    os.environ["SMALLVISION_DATA_DIR"] = str(data_dir)
    os.environ.update({f"SMALLVISION_{k.upper()}": v for k, v in settings.items()})
    get_settings.cache_clear()

    manifest = load_manifest(uuid.UUID(dataset_id))
    started = time.perf_counter()
    folder = local_images(uuid.UUID(dataset_id), manifest["images"])
    fetched = time.perf_counter() - started
    started = time.perf_counter()
    for split in ("train", "validation", "test"):
        load_split(
            manifest,
            files=lambda _: folder,
            split=split,
            image_size=image_size,
            max_pixels=50_000_000,
        )
    return fetched, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="storage-bench-") as tmp_name:
        tmp = Path(tmp_name)
        archive = tmp / "cats_vs_dogs_small.zip"
        images = build_photos_zip(archive)
        with s3_server(tmp / "moto.log") as endpoint:
            for backend in ("local", "s3"):
                uploads: list[float] = []
                fetches: list[float] = []
                decodes: list[float] = []
                for repeat in range(args.repeats):
                    data_dir = tmp / f"{backend}-{repeat}"
                    settings = bucket_settings(endpoint) if backend == "s3" else {}
                    with live_service(data_dir / "api", **settings) as service:
                        seconds, dataset = upload(service.base, archive, "cats", service.headers)
                    uploads.append(seconds)
                    # A local worker reads the API's folder (one shared filesystem); a worker
                    # with a bucket has a data folder of its own and starts with no cache.
                    worker_dir = data_dir / ("api" if backend == "local" else "worker")
                    fetched, decoded = load_as_a_worker(
                        dataset["id"],
                        data_dir=worker_dir,
                        settings=settings,
                        image_size=args.image_size,
                    )
                    fetches.append(fetched)
                    decodes.append(decoded)
                    shutil.rmtree(data_dir, ignore_errors=True)
                print(backend, uploads, fetches, decodes, flush=True)
                rows.append(
                    f"| {backend} | {statistics.median(uploads):.1f} "
                    f"({min(uploads):.1f}-{max(uploads):.1f}) | "
                    f"{images / statistics.median(uploads):.0f} | "
                    f"{statistics.median(fetches):.1f} | {statistics.median(decodes):.1f} | "
                    f"{statistics.median(fetches) + statistics.median(decodes):.1f} |"
                )
    today = datetime.now(UTC).date().isoformat()
    write_section(
        "storage",
        f"""## Object storage: datasets in an S3 bucket versus the local filesystem

Measured {today} on {machine()}, with `.venv/bin/python -m benchmarks.storage
--repeats {args.repeats} --image-size {args.image_size}`: the zip of `cats_vs_dogs_small`
({images} JPEG photos) uploaded to a live API (uvicorn, SQLite), then the first stage of a
training job run as a worker runs it, with an empty cache. Medians of {args.repeats} runs
(range in parentheses). The bucket is moto's S3 server on loopback (an in-memory S3 API in
Python), so this is the service's own cost of the S3 API, not a network's or a real store's.

| storage | upload s | images/s | job: images to local disk s | job: decode + resize s | job: data loading s |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

With local storage the worker reads the dataset's folder in place (nothing to fetch). With a
bucket, the upload publishes every image and then the manifest (16 PUTs at a time), and the
worker downloads the images it lacks into its cache by content hash (16 at a time), checking
each against its sha256; a later job on the same node finds them there (then only the decode
column remains; not measured here).""",
    )


if __name__ == "__main__":
    main()
