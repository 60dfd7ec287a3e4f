"""`make run`'s launcher: migrations, the API and a real worker on the embedded SQLite broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from app.core.config import PROJECT_ROOT
from tests.processes import LiveService, running_service, wait_until, watch_job_statuses
from tests.zips import SHARED, image_bytes, tiny_photo_zip

README_ADDRESS = "http://127.0.0.1:8000"


def readme_curl_examples() -> str:
    """Every ```sh block of README.md that runs curl, in order, as one shell script (less the
    line that sets KEY to a placeholder)."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (PROJECT_ROOT / "README.md").read_text(), re.S | re.M)
    script = "\n".join(block for block in blocks if "curl " in block)
    return "\n".join(line for line in script.splitlines() if not line.startswith("export KEY="))


def run_readme_examples(base: str, key: str, folder: Path) -> str:
    """Run the README's curl examples in bash against `base`, failing on any non-2xx answer."""
    tiny_photo_zip(folder / "pets.zip")
    cats = sorted((SHARED / "data" / "cats_vs_dogs_small" / "test" / "cats").iterdir())
    (folder / "cat.jpg").write_bytes(cats[0].read_bytes())
    (folder / "a.jpg").write_bytes(cats[1].read_bytes())
    (folder / "b.png").write_bytes(image_bytes("PNG", size=(120, 90)))
    # a cat the zip lacks (it takes the first 8 training photos), for the review queue
    train_cats = sorted((SHARED / "data" / "cats_vs_dogs_small" / "train" / "cats").iterdir())
    (folder / "new-cat.jpg").write_bytes(train_cats[20].read_bytes())
    script = readme_curl_examples().replace(README_ADDRESS, base)
    assert "$KEY" in script and "curl" in script
    preamble = 'set -euo pipefail\ncurl() { command curl --fail-with-body --max-time 600 "$@"; }\n'
    run = subprocess.run(
        ["bash", "-c", preamble + script],
        cwd=folder,
        env={**os.environ, "KEY": key},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, (
        f"README example failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    return run.stdout


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
    log = tmp_path / "run.log"
    weights = {"PRETRAINED_WEIGHTS_DIR": str(SHARED / "weights")}
    with running_service(data_dir, log, settings=weights) as service:
        try:
            _walk_then_ctrl_c(service, tmp_path, log)
        finally:
            for pid in _processes_with_env(str(data_dir)):  # children live in their own sessions
                os.kill(pid, signal.SIGKILL)


def _walk_then_ctrl_c(service: LiveService, tmp_path: Path, log: Path) -> None:
    base, data_dir, launcher = service.url, service.data_dir, service.launcher
    assert (data_dir / "smallvision.db").exists()
    assert (data_dir / "broker.db").exists()
    assert f"console on {base}/ui" in log.read_text()  # where a person goes first

    # The first start prints an admin key; nothing but health answers without one.
    assert httpx.post(f"{base}/workers/check", timeout=10).status_code == 401
    headers = {"Authorization": f"Bearer {service.admin_key}"}
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

    # A new user's walk through README: every curl example, as written, in order.
    examples = tmp_path / "readme"
    examples.mkdir()
    output = run_readme_examples(base, service.admin_key, examples)
    assert '"predictions":[{"filename":"cat.jpg"' in output, output[-2000:]
    assert (examples / "curves.png").read_bytes().startswith(b"\x89PNG")

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
