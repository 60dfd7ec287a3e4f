"""Shared pieces of the benchmarks: a live API on loopback, peak memory, the results file."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
RESULTS = PROJECT_ROOT / "docs" / "BENCHMARKS.md"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kb(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak since start) of a process, in KiB (Linux /proc)."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match, field
    return int(match.group(1))


@dataclass(frozen=True)
class LiveService:
    base: str  # http://127.0.0.1:<port>
    process: subprocess.Popen[bytes]
    headers: dict[str, str]  # an admin API key


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without its SMALLVISION_ settings, for a service (or its
    command line) over the store in data_dir with `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMALLVISION_")}
    env["SMALLVISION_DATA_DIR"] = str(data_dir)
    env.update({f"SMALLVISION_{k.upper()}": v for k, v in settings.items()})
    return env


def app_cli(data_dir: Path, *argv: str, **settings: str) -> str:
    """`python -m app.cli ARGV` on the store in data_dir (with the service's `settings`); its
    output, stripped."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        cwd=PROJECT_ROOT,
        env=service_env(data_dir, **settings),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@contextmanager
def live_service(
    data_dir: Path, *, with_worker: bool = False, **settings: str
) -> Iterator[LiveService]:
    """Serve the API on a free loopback port over a fresh SQLite store in data_dir: alone
    (uvicorn, after migrating) or with one worker on the embedded broker (`app.cli run`), and
    make an admin API key for the benchmark. Output goes to data_dir/service.log."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = service_env(data_dir, **settings)
    port = free_port()
    if with_worker:
        argv = [sys.executable, "-m", "app.cli", "run", "--port", str(port)]
    else:
        subprocess.run(
            [sys.executable, "-m", "app.cli", "migrate"],
            cwd=PROJECT_ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--http",
            "app.api.server:HeaderTimeoutProtocol",
        ]
    with (data_dir / "service.log").open("wb") as log:
        server = subprocess.Popen(
            argv, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the service did not start; see {data_dir / 'service.log'}")
        key = app_cli(
            data_dir, "keys", "create", "--name", "benchmark", "--scopes", "admin", **settings
        )
        yield LiveService(base=base, process=server, headers={"Authorization": f"Bearer {key}"})
    finally:
        server.send_signal(signal.SIGINT)  # both uvicorn and app.cli stop cleanly on it
        server.wait(timeout=60)


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between `<!-- name -->` markers in docs/BENCHMARKS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def machine() -> str:
    cpus = os.cpu_count()
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{cpus} cores ({model}), Python {sys.version.split()[0]}"


def download_version(
    base: str,
    headers: dict[str, str],
    name: str,
    target: Path,
    **params: str,
) -> Path:
    """Version 1 of model `name` as downloaded with `params` (format, bundle), into target."""
    import httpx

    response = httpx.get(
        f"{base}/models/{name}/versions/1/download", params=params, timeout=120, headers=headers
    )
    response.raise_for_status()
    target.write_bytes(response.content)
    return target
