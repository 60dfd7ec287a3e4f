"""A real Celery worker process picks jobs up from the real broker and records them in SQL."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import api_client, migrate
from tests.processes import running_worker, watch_job_statuses


def test_worker_runs_a_job_via_redis_and_postgres(
    configure, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    configure(database_url=postgres_url, broker_url=redis_url)
    migrate(postgres_url)
    log = tmp_path / "worker.log"
    with running_worker(log), api_client() as client:
        accepted = client.post("/workers/check")
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["status"] == "queued"
        job_url = f"/jobs/{accepted.json()['id']}"

        statuses = watch_job_statuses(
            lambda: client.get(job_url).json()["status"], first="queued", timeout=90, log=log
        )
        job = client.get(job_url).json()

    assert statuses == ["queued", "running", "succeeded"], (statuses, job)
    assert job["progress"] == 1.0
    assert job["worker_id"].startswith("celery@")
    assert job["started_at"] <= job["finished_at"]
    assert job["result"]["keras"].startswith("3.")
    assert job["result"]["keras_backend"] == "tensorflow"
