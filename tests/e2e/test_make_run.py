"""`make run`'s launcher: migrations, the API and a real worker on the embedded SQLite broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.core.config import PROJECT_ROOT
from tests.processes import free_port, stop_process_group, wait_until, watch_job_statuses


def _processes_with_env(marker: str) -> list[int]:
    """Pids of live processes whose environment contains `marker` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "\nState:\tZ" not in status:  # zombies are already gone
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_run_serves_api_and_worker_then_ctrl_c_stops_both(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SMALLVISION_")}
    env["SMALLVISION_DATA_DIR"] = str(data_dir)
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "run", "--port", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=60, what="the API to be ready", log=log)
        assert (data_dir / "smallvision.db").exists()
        assert (data_dir / "broker.db").exists()

        # The first start prints an admin key; nothing but health answers without one.
        assert httpx.post(f"{base}/workers/check", timeout=10).status_code == 401
        match = re.search(r"^\s+(sv_\S+)$", log.read_text(), re.M)
        assert match, log.read_text()[-3000:]
        headers = {"Authorization": f"Bearer {match.group(1)}"}
        accepted = httpx.post(f"{base}/workers/check", timeout=10, headers=headers)
        assert accepted.status_code == 202, accepted.text
        job_url = f"{base}/jobs/{accepted.json()['id']}"
        statuses = watch_job_statuses(
            lambda: httpx.get(job_url, timeout=5, headers=headers).json()["status"],
            first=accepted.json()["status"],
            timeout=120,
            log=log,
        )
        assert statuses == ["queued", "running", "succeeded"], log.read_text()[-3000:]

        assert len(_processes_with_env(str(data_dir))) >= 3  # launcher, API, worker (+ child)
        # Ctrl-C: SIGINT to the launcher alone, as a terminal sends it to the foreground job.
        started = time.monotonic()
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=40) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 40
        wait_until(
            lambda: not _processes_with_env(str(data_dir)),
            timeout=10,
            what="the API and worker processes to exit",
            log=log,
        )
        assert "Warm shutdown" in log.read_text()
    finally:
        stop_process_group(launcher, sig=signal.SIGKILL)
        for pid in _processes_with_env(str(data_dir)):  # children live in their own sessions
            os.kill(pid, signal.SIGKILL)
