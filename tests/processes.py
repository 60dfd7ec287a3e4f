"""Helpers that start real service processes (Celery workers, the `make run` launcher)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.cli import api_command, worker_command
from app.core.config import ENV_PREFIX, PROJECT_ROOT


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, log: Path | None = None
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{tail}")


def stop_process_group(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace=30.0):
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def running_worker(
    log_path: Path, *, env: Mapping[str, str] | None = None, node_name: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process, ready to consume, using the current environment's
    settings or `env` (a whole environment), named `node_name` if given."""
    command = worker_command() + (["--hostname", node_name] if node_name else [])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    try:
        wait_until(
            lambda: "ready." in log_path.read_text() or process.poll() is not None,
            timeout=60,
            what="the Celery worker to be ready",
            log=log_path,
        )
        assert process.poll() is None, log_path.read_text()[-3000:]
        yield process
    finally:
        stop_process_group(process)


def watch_job_statuses(
    read_status: Callable[[], str], *, first: str, timeout: float, log: Path | None = None
) -> list[str]:
    """Poll a job's status until it is finished; return the distinct statuses seen, in order,
    starting with `first` (the status its creation returned)."""
    seen: list[str] = [first]

    def finished() -> bool:
        status = read_status()
        if not seen or seen[-1] != status:
            seen.append(status)
        return status in {"succeeded", "failed", "cancelled"}

    wait_until(finished, timeout=timeout, what=f"the job to finish (seen {seen})", log=log)
    return seen


def _answers_ok(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    """Whether `url` answers 200 (the process that should serve it must still be running)."""
    import httpx

    assert process.poll() is None, log.read_text()[-3000:]
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def running_api(
    log_path: Path, *, port: int, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """uvicorn serving the app on loopback, with the current environment's settings or `env`
    (a whole environment); yields its URL."""
    with running_api_process(log_path, port=port, env=env) as (base, _):
        yield base


@contextmanager
def running_api_process(
    log_path: Path, *, port: int, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """running_api, yielding the process too (to read its memory)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            api_command(host="127.0.0.1", port=port),
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _answers_ok(f"{base}/health", process, log_path),
            timeout=90,
            what="the API to answer",
            log=log_path,
        )
        yield base, process
    finally:
        stop_process_group(process)


def start_redis_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    """A redis-server of its own on loopback `port` (no persistence), once it accepts
    connections; skips the test where redis-server is not installed."""
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        pytest.skip("redis-server is not installed")
    with log.open("ab") as out:
        server = subprocess.Popen(
            [
                redis_binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return True
        except OSError:
            return False

    wait_until(answers, timeout=20, what="redis-server to listen", log=log)
    return server


FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def wait_job_finished(client: Any, job_id: str, *, log: Path, timeout: float) -> dict[str, Any]:
    """Poll GET /jobs/{id} through `client` until the job has finished; return it."""
    wait_until(
        lambda: client.get(f"/jobs/{job_id}").json()["status"] in FINISHED_STATUSES,
        timeout=timeout,
        what=f"job {job_id} to finish",
        log=log,
    )
    return dict(client.get(f"/jobs/{job_id}").json())


@dataclass(frozen=True)
class LiveService:
    """A running `make run`: its address, the admin key it printed, and how it was started."""

    url: str
    admin_key: str
    launcher: subprocess.Popen[bytes]
    env: dict[str, str]  # the launcher's environment: `python -m app.cli keys ...` with it
    data_dir: Path


@contextmanager
def running_service(
    data_dir: Path, log: Path, *, settings: Mapping[str, str] = {}
) -> Iterator[LiveService]:
    """`make run`'s launcher (`python -m app.cli run`: migrations, then the API and a Celery
    worker on SQLite and the embedded broker) on a free port, its data under `data_dir` and
    `SMALLVISION_<name>` = value for each of `settings`; yields once it is ready."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    env[ENV_PREFIX + "DATA_DIR"] = str(data_dir)
    env[ENV_PREFIX + "EDGE_EXPORT_FORMATS"] = ""  # (tests/conftest.py says why)
    env.update({ENV_PREFIX + name: value for name, value in settings.items()})
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "run", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _answers_ok(f"{url}/ready", launcher, log),
            timeout=90,
            what="the API to be ready",
            log=log,
        )
        # The first start prints an admin key, before it starts the API.
        match = re.search(r"^\s+(sv_\S+)$", log.read_text(), re.M)
        assert match, log.read_text()[-3000:]
        yield LiveService(url, match.group(1), launcher, env, data_dir)
    finally:
        stop_process_group(launcher)  # the launcher stops the API and the worker it started


# Not among the shared weight files: a job on vgg16 has to download it.
MISSING_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def weights_settings() -> dict[str, str]:
    """Settings for running_service: the shared weight files on disk, and a download address
    that answers nothing, so a job on vgg16 fails within seconds naming MISSING_WEIGHTS_FILE."""
    from tests.zips import SHARED

    return {
        "PRETRAINED_WEIGHTS_DIR": str(SHARED / "weights"),
        "WEIGHTS_DOWNLOAD_URL": f"http://127.0.0.1:{free_port()}/",
        "WEIGHTS_DOWNLOAD_TIMEOUT_SECONDS": "5",
    }
