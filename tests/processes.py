"""Helpers that start real service processes (Celery workers, the `make run` launcher)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.cli import api_command, worker_command
from app.core.config import PROJECT_ROOT


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
def running_worker(log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process using the current environment's settings, ready to consume."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            worker_command(), cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
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


@contextmanager
def running_api(log_path: Path, *, port: int) -> Iterator[str]:
    """uvicorn serving the app (current environment's settings) on loopback; yields its URL."""
    import httpx

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            api_command(host="127.0.0.1", port=port), cwd=PROJECT_ROOT, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, timeout=90, what="the API to answer", log=log_path)
        yield base
    finally:
        stop_process_group(process)


FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def wait_job_finished(client: Any, job_id: str, *, log: Path, timeout: float) -> dict[str, Any]:
    """Poll GET /jobs/{id} through `client` until the job has finished; return it."""
    wait_until(
        lambda: client.get(f"/jobs/{job_id}").json()["status"] in FINISHED_STATUSES,
        timeout=timeout, what=f"job {job_id} to finish", log=log,
    )  # fmt: skip
    return dict(client.get(f"/jobs/{job_id}").json())
