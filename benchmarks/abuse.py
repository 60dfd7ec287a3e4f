"""Memory attacks against a live API: each answer's status and the API process's RSS growth.

    .venv/bin/python -m benchmarks.abuse [--entries 2000000]

Starts the API alone (uvicorn, SQLite) on loopback with the default settings, registers a small
untrained model, then replays the attacks an outside review found, one at a time. Before each,
the process's peak-RSS mark is reset (/proc/<pid>/clear_refs, "5"); the growth printed is the
peak during the attack minus the RSS before it. Target: a 4xx for each hostile request and
under 150 MB of growth. Writes the "abuse" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
from PIL import Image

from benchmarks.common import PROJECT_ROOT, live_service, machine, memory_kb, write_section

MB = 1024 * 1024
GROWTH_TARGET_MB = 150


def register_model(data_dir: Path) -> None:
    """A small untrained classifier registered straight into the service's store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMALLVISION_")}
    subprocess.run(
        [sys.executable, "-c",
         "from tests.models import register_tiny_model; register_tiny_model('abuse', "
         "image_size=160, owner='benchmark')"],
        cwd=PROJECT_ROOT, check=True, capture_output=True,
        env={**env, "SMALLVISION_DATA_DIR": str(data_dir)},
    )  # fmt: skip


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS; return that RSS in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_kb(pid, "VmRSS")


def streamed(total: int, chunk: int = MB) -> Iterator[bytes]:
    """`total` bytes of a JSON string body, sent in chunks (no Content-Length)."""
    yield b'{"images": [{"b64": "'
    sent = 0
    while sent < total:
        yield b"A" * chunk
        sent += chunk
    yield b'"}]}'


def gzip_bomb(inflated: int) -> bytes:
    """A gzip stream of `inflated` spaces, built without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b" " * (16 * MB)
    parts = [packer.compress(block) for _ in range(inflated // len(block))]
    return b"".join(parts) + packer.flush()


def one_bit_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def many_entries_zip(path: Path, entries: int) -> None:
    """A zip of `entries` empty stored files, written record by record (APPNOTE 4.3), zip64
    end records when the count needs them; a zipfile.ZipFile writer would hold them all."""
    local = struct.Struct("<4s5H3L2H")
    central = struct.Struct("<4s6H3L5H2L")
    offsets = []
    with path.open("wb") as out:
        for index in range(entries):
            name = f"c/{index:07d}".encode()
            offsets.append(out.tell())
            out.write(local.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name)
        directory_start = out.tell()
        for index, offset in enumerate(offsets):
            name = f"c/{index:07d}".encode()
            out.write(
                central.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0,
                             0, 0, offset) + name
            )  # fmt: skip
        directory_size = out.tell() - directory_start
        zip64_end = out.tell()
        out.write(
            struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
                        directory_size, directory_start)
        )  # fmt: skip
        out.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_end, 1))
        out.write(
            struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                        0xFFFFFFFF, 0)
        )  # fmt: skip


def classes_zip(classes: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(classes):
            image = Image.new("RGB", (64, 64), (index % 256, index // 256 * 40, 90))
            encoded = io.BytesIO()
            image.save(encoded, format="PNG")
            archive.writestr(f"class_{index:03d}/a.png", encoded.getvalue())
    return buffer.getvalue()


def measure(pid: int, attack: Callable[[], list[int]]) -> tuple[list[int], float, float]:
    """(statuses, RSS growth in MB at the peak, seconds) of one attack."""
    before = reset_peak(pid)
    started = time.perf_counter()
    statuses = attack()
    seconds = time.perf_counter() - started
    time.sleep(0.2)
    growth = (memory_kb(pid, "VmHWM") - before) / 1024
    return statuses, growth, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=2_000_000, help="entries of the zip attack")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="abuse-bench-") as tmp:
        work = Path(tmp)
        with live_service(work / "var") as live:
            base, key = live.base, live.headers
            pid = live.process.pid
            register_model(work / "var")
            client = httpx.Client(timeout=600)
            png = one_bit_png(7000)
            bomb = gzip_bomb(1024 * MB)
            zip_path = work / "entries.zip"
            many_entries_zip(zip_path, args.entries)
            deep = b"[" * 5000 + b"]" * 5000
            nested = (
                b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": '
                + deep + b"}]}"
            )  # fmt: skip
            big_dataset = client.post(
                f"{base}/datasets", files={"file": ("c.zip", classes_zip(500))},
                data={"name": "500 classes"}, headers=key,
            )  # fmt: skip
            assert big_dataset.status_code == 201, big_dataset.text
            dataset_id = big_dataset.json()["id"]
            # warm: the model is loaded and TensorFlow initialised before anything is measured
            ok = client.post(f"{base}/predict", files={"file": ("p.png", one_bit_png(64))},
                             headers=key)  # fmt: skip
            assert ok.status_code == 200, ok.text

            def predict_png(times: int) -> list[int]:
                statuses: list[int] = []

                def one() -> None:
                    response = httpx.post(f"{base}/predict", files={"file": ("b.png", png)},
                                          headers=key, timeout=600)  # fmt: skip
                    statuses.append(response.status_code)

                threads = [threading.Thread(target=one) for _ in range(times)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                return statuses

            attacks: list[tuple[str, Callable[[], list[int]]]] = [
                ("200 MB JSON to /predict/json, no key, Content-Length sent",
                 lambda: [client.post(f"{base}/predict/json", content=b" " * (200 * MB),
                                      headers={"content-type": "application/json"}).status_code]),
                ("200 MB JSON to /v1/models/abuse:predict, no key, streamed",
                 lambda: [client.post(f"{base}/v1/models/abuse:predict",
                                      content=streamed(200 * MB)).status_code]),
                ("200 MB JSON to /predict/json with a key, streamed",
                 lambda: [client.post(f"{base}/predict/json", content=streamed(200 * MB),
                                      headers=key).status_code]),
                (f"gzip bomb to /v2/models/abuse/infer ({len(bomb) // 1024} KB -> 1 GB)",
                 lambda: [client.post(f"{base}/v2/models/abuse/infer", content=bomb,
                                      headers={**key, "Content-Encoding": "gzip"}).status_code]),
                (f"7000x7000 1-bit PNG ({len(png) // 1024} KB) to /predict, 1 request",
                 lambda: predict_png(1)),
                ("the same PNG, 4 requests at once", lambda: predict_png(4)),
                (f"zip with {args.entries:,} central-directory entries to /datasets",
                 lambda: [client.post(f"{base}/datasets", headers=key, data={"name": "z"},
                                      files={"file": ("z.zip", zip_path.open("rb"))}
                                      ).status_code]),
                ("zip with 600 class folders to /datasets",
                 lambda: [client.post(f"{base}/datasets", headers=key, data={"name": "c"},
                                      files={"file": ("c.zip", classes_zip(600))}).status_code]),
                ("preview.png of a 500-class dataset (the most classes allowed)",
                 lambda: [client.get(f"{base}/datasets/{dataset_id}/preview.png",
                                     headers=key).status_code]),
                ("5000-deep nested JSON to /v2/models/abuse/infer",
                 lambda: [client.post(f"{base}/v2/models/abuse/infer", content=nested,
                                      headers=key).status_code]),
            ]  # fmt: skip
            for name, attack in attacks:
                statuses, growth, seconds = measure(pid, attack)
                rows.append((name, statuses, growth, seconds))
                print(json.dumps({"attack": name, "statuses": statuses,
                                  "rss_growth_mb": round(growth, 1),
                                  "seconds": round(seconds, 2)}), flush=True)  # fmt: skip
    write_section("abuse", render(rows))


def render(rows: list[tuple[str, list[int], float, float]]) -> str:
    lines = [
        "## Hostile input: status and API memory per attack",
        "",
        f"`.venv/bin/python -m benchmarks.abuse` on {datetime.now(UTC):%Y-%m-%d}, "
        f"{machine()}: the API alone (uvicorn, SQLite, default settings), one attack at a time; "
        "growth = peak RSS during the attack minus RSS before it (peak reset through "
        f"/proc/<pid>/clear_refs). Target: 4xx and under {GROWTH_TARGET_MB} MB.",
        "",
        "| attack | status | API RSS growth (MB) | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for name, statuses, growth, seconds in rows:
        shown = ", ".join(str(s) for s in sorted(statuses))
        lines.append(f"| {name} | {shown} | {growth:.0f} | {seconds:.1f} |")
    lines += [
        "",
        "Two rows are valid requests and answered 200 with bounded memory: the PNG is an "
        "image within the pixel limit (49 M of 50 M pixels), decoded at the model's scale while "
        "holding a share of SMALLVISION_DECODE_MEMORY_BUDGET_BYTES; the preview is of the "
        "largest dataset allowed, its grid cut to 40 classes. Every other row is refused (4xx).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
