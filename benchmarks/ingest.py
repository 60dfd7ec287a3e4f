"""Dataset ingest benchmark: throughput on real photos, and API memory on a 1 GB zip.

    .venv/bin/python -m benchmarks.ingest [--big-gb 1.0]

Results go to docs/BENCHMARKS.md (section "ingest").
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks.common import SHARED, live_service, machine, memory_kb, write_section

CATS_VS_DOGS = SHARED / "data" / "cats_vs_dogs_small"
BMP_SIDE = 1024  # a 1024x1024 24-bit BMP is 3 MiB: ~340 of them make 1 GiB


def build_photos_zip(path: Path) -> int:
    count = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for image in sorted(CATS_VS_DOGS.rglob("*.jpg")):
            archive.write(image, f"cats_vs_dogs_small/{image.relative_to(CATS_VS_DOGS)}")
            count += 1
    return count


def _bmp() -> bytes:
    """A distinct, incompressible 24-bit BMP (random pixels), so nothing is deduplicated."""
    row = BMP_SIDE * 3
    pixels = os.urandom(row * BMP_SIDE)
    header_size = 14 + 40
    size = header_size + len(pixels)
    header = b"BM" + size.to_bytes(4, "little") + b"\0\0\0\0" + header_size.to_bytes(4, "little")
    info = (
        (40).to_bytes(4, "little")
        + BMP_SIDE.to_bytes(4, "little")
        + BMP_SIDE.to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (24).to_bytes(2, "little")
        + bytes(24)
    )
    return header + info + pixels


def build_big_zip(path: Path, *, gigabytes: float) -> int:
    target = int(gigabytes * 1024**3)
    count = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        while path.stat().st_size < target:
            archive.writestr(f"big/{'a' if count % 2 else 'b'}/{count}.bmp", _bmp())
            count += 1
    return count


def upload(base: str, path: Path, name: str, headers: dict[str, str]) -> tuple[float, dict]:
    started = time.perf_counter()
    with path.open("rb") as handle:
        response = httpx.post(
            f"{base}/datasets",
            files={"file": (path.name, handle, "application/zip")},
            data={"name": name},
            timeout=3600,
            headers=headers,
        )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()


def sample_peak(pid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], memory_kb(pid, "VmRSS"))
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big-gb", type=float, default=1.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        work = Path(tmp)
        photos = work / "cats_vs_dogs_small.zip"
        n_photos = build_photos_zip(photos)
        big = work / "big.zip"
        n_big = build_big_zip(big, gigabytes=args.big_gb)
        big_size_gb = big.stat().st_size / 1024**3
        print(f"built {photos.name} ({n_photos} files) and {big.name} ({n_big} files)")

        with live_service(work / "var") as live:
            base, server = live.base, live.process
            photo_seconds, photo_body = upload(base, photos, "cats_vs_dogs_small", live.headers)
            ingested = photo_body["stats"]["image_count"]
            print(f"photos: {ingested} images in {photo_seconds:.1f} s")

            before = memory_kb(server.pid, "VmRSS")
            peak = [before]
            stop = threading.Event()
            sampler = threading.Thread(target=sample_peak, args=(server.pid, stop, peak))
            sampler.start()
            big_seconds, big_body = upload(base, big, "one_gigabyte", live.headers)
            stop.set()
            sampler.join()
            growth_mb = (peak[0] - before) / 1024
            print(
                f"1 GB zip: {big_body['stats']['image_count']} images in {big_seconds:.1f} s, "
                f"RSS {before / 1024:.0f} MB -> peak {peak[0] / 1024:.0f} MB"
            )

    rate = ingested / photo_seconds
    body = f"""## Dataset ingest (`POST /datasets`)

Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, with
`.venv/bin/python -m benchmarks.ingest --big-gb {args.big_gb:g}`: a live API (uvicorn, SQLite store)
on loopback, uploads with httpx from another process. Time is the whole request: upload, zip
checks, decoding every image, hashing, writing, statistics.

| upload | images | seconds | images/s | target |
| --- | --- | --- | --- | --- |
| zip of `cats_vs_dogs_small` (JPEG, deflated) | {ingested} | {photo_seconds:.1f} | {rate:.0f} | >= 150 images/s |
| {big_size_gb:.2f} GiB zip of {n_big} random 1024x1024 BMPs (stored) | {big_body["stats"]["image_count"]} | {big_seconds:.1f} | {big_body["stats"]["image_count"] / big_seconds:.1f} | - |

API process memory during the {big_size_gb:.2f} GiB upload (RSS sampled every 50 ms): {before / 1024:.0f} MB
before, {peak[0] / 1024:.0f} MB at peak, growth **{growth_mb:.0f} MB** (target: under 300 MB).
"""
    write_section("ingest", body)
    print(body)


if __name__ == "__main__":
    main()
