"""Faults on the real stack (PostgreSQL, Redis, Celery worker processes): a killed worker,
Redis down, PostgreSQL restarted under a running API, an unwritable models store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import api_client, migrate
from tests.models import register_tiny_model
from tests.processes import (
    free_port,
    running_worker,
    start_redis_server,
    stop_process_group,
    wait_job_finished,
    wait_until,
)
from tests.zips import tiny_photo_zip

TINY = {"image_size": 32, "batch_size": 8, "seed": 3}


def _upload(client, tmp_path: Path) -> str:
    response = client.post(
        "/datasets",
        files={"file": ("t.zip", tiny_photo_zip(tmp_path / "t.zip").read_bytes())},
        data={"name": "t"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _wait_finished(client, job_id: str, log: Path, timeout: float = 180) -> dict:
    return wait_job_finished(client, job_id, log=log, timeout=timeout)


@pytest.fixture
def stack(configure, postgres_url: str, redis_url: str, tmp_path: Path):
    configure(database_url=postgres_url, broker_url=redis_url, JOB_HEARTBEAT_TIMEOUT_SECONDS="600")
    migrate(postgres_url)
    return tmp_path


def test_a_killed_worker_leaves_no_job_running_once_a_worker_restarts(stack: Path) -> None:
    log = stack / "worker.log"
    with api_client() as client:
        dataset_id = _upload(client, stack)
        with running_worker(log) as worker:
            job_id = client.post(
                "/jobs", json={"dataset_id": dataset_id, "method": "scratch", "epochs": 30, **TINY}
            ).json()["id"]
            wait_until(
                lambda: bool(client.get(f"/jobs/{job_id}/metrics").json()["epochs"]),
                timeout=120,
                what="the job to be training",
                log=log,
            )
            os.killpg(worker.pid, signal.SIGKILL)  # the worker and its job child, no goodbye
            worker.wait()
        dead = client.get(f"/jobs/{job_id}").json()
        assert dead["status"] == "running"  # nobody can tell yet: the worker died silently

        with running_worker(stack / "worker2.log"):  # on start it requeues its dead jobs
            job = _wait_finished(client, job_id, stack / "worker2.log")
        assert job["status"] == "succeeded", job["error"]
        assert job["worker_id"] != dead["worker_id"]
        epochs = [e["epoch"] for e in client.get(f"/jobs/{job_id}/metrics").json()["epochs"]]
        assert epochs == list(range(1, 31))  # re-run from the start, curves not duplicated


def test_redis_down_gives_503_and_no_orphan_job_then_jobs_run_again(
    configure, postgres_url: str, tmp_path: Path
) -> None:
    from app.core.metrics import RATE_LIMIT_LOCAL_CHECKS
    from app.db.models import TrainingJob
    from app.db.session import session_scope
    from tests.zips import image_bytes

    port = free_port()
    redis_log = tmp_path / "redis.log"
    redis_server = start_redis_server(port, redis_log)
    try:
        configure(
            database_url=postgres_url,
            broker_url=f"redis://127.0.0.1:{port}/0",
            REDIS_URL=f"redis://127.0.0.1:{port}/1",
            READINESS_TIMEOUT_SECONDS="2",
        )
        migrate(postgres_url)
        register_tiny_model("pets")
        log = tmp_path / "worker.log"
        with running_worker(log), api_client() as client:
            stop_process_group(redis_server)  # Redis goes away
            refused = client.post("/workers/check")
            assert refused.status_code == 503
            assert "broker" in refused.json()["detail"]
            with session_scope() as session:
                assert session.query(TrainingJob).count() == 0  # no orphan row
            assert client.get("/ready").json()["detail"]["broker"] != "ok"
            local_checks = RATE_LIMIT_LOCAL_CHECKS._value.get()
            predicted = client.post("/predict", files={"file": ("x.png", image_bytes("PNG"))})
            # serving needs neither the broker nor the rate limits' Redis: this process
            # checks the key's rate in its own buckets meanwhile
            assert predicted.status_code == 200
            assert RATE_LIMIT_LOCAL_CHECKS._value.get() == local_checks + 1

            redis_server = start_redis_server(port, redis_log)  # Redis is back, same address
            accepted = client.post("/workers/check")
            assert accepted.status_code == 202, accepted.text
            job = _wait_finished(client, accepted.json()["id"], log, timeout=120)
            assert job["status"] == "succeeded", job["error"]
    finally:
        stop_process_group(redis_server)


def _postgres_cluster() -> list[str]:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        pytest.skip("no local PostgreSQL cluster this test can restart (pg_ctlcluster)")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"]


def test_api_recovers_after_postgres_restarts_without_its_own_restart(stack: Path) -> None:
    from tests.zips import image_bytes

    register_tiny_model("pets")
    cluster = _postgres_cluster()
    with api_client() as client:
        assert client.get("/datasets").status_code == 200  # pooled connections now exist
        subprocess.run([*cluster, "restart"], check=True, capture_output=True, timeout=120)
        statuses = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses.append(client.get("/datasets").status_code)
            if statuses[-1] == 200:
                break
            time.sleep(0.5)
        assert statuses[-1] == 200, statuses
        assert set(statuses) <= {200, 503}, statuses  # never a 500 on the way
        predicted = client.post("/predict", files={"file": ("x.png", image_bytes("PNG"))})
        assert predicted.status_code == 200
        assert client.get("/ready").status_code == 200


def test_unwritable_models_store_fails_the_job_and_leaves_no_version(stack: Path) -> None:
    from app.core.config import get_settings

    log = stack / "worker.log"
    with api_client() as client, running_worker(log):
        dataset_id = _upload(client, stack)
        store = get_settings().models_dir
        shutil.rmtree(store)
        store.write_text("not a directory: the store's volume is broken")  # nothing can be saved
        try:
            job_id = client.post(
                "/jobs", json={"dataset_id": dataset_id, "method": "scratch", "epochs": 1, **TINY}
            ).json()["id"]
            job = _wait_finished(client, job_id, log)
        finally:
            store.unlink()
            store.mkdir()
        assert job["status"] == "failed"
        assert "Error" in job["error"] and str(store) in job["error"], job["error"]
        assert client.get("/models").json() == []
        assert list(store.iterdir()) == []
