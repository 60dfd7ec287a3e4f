"""The job lifecycle a worker drives: claim once, run the method, record success or failure."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.db.models import WORKER_CHECK, JobStatus, TrainingJob
from app.db.session import session_scope
from app.services import jobs, training
from app.services.training import lifecycle
from app.services.training.run import JobReporter
from tests.conftest import migrate
from tests.processes import wait_until


@pytest.fixture
def database(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url)
    migrate(sqlite_url)


def _queued_job(method: str = WORKER_CHECK) -> uuid.UUID:
    with session_scope() as session:
        job = jobs.create_job(
            session, method=method, dataset_id=None, parameters={"a": 1}, owner=None
        )
        return job.id


def _job(job_id: uuid.UUID) -> TrainingJob:
    with session_scope() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        return job


def test_success_records_result_timestamps_and_worker(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[uuid.UUID] = []

    def runner(job_id: uuid.UUID, worker_id: str) -> dict[str, Any]:
        calls.append(job_id)
        assert _job(job_id).status == JobStatus.RUNNING  # the row says running while it runs
        return {"answer": 42}

    monkeypatch.setitem(training.METHOD_RUNNERS, WORKER_CHECK, runner)
    job_id = _queued_job()
    training.run_job(job_id=job_id, worker_id="w1")

    job = _job(job_id)
    assert calls == [job_id]
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == {"answer": 42}
    assert job.worker_id == "w1"
    assert job.progress == 1.0
    assert job.started_at is not None and job.finished_at is not None
    assert job.started_at.tzinfo is not None
    assert job.started_at <= job.finished_at


def test_a_second_delivery_of_the_same_job_does_nothing(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[uuid.UUID] = []
    monkeypatch.setitem(
        training.METHOD_RUNNERS,
        WORKER_CHECK,
        lambda job_id, worker_id: calls.append(job_id) or {},
    )
    job_id = _queued_job()
    training.run_job(job_id=job_id, worker_id="w1")
    training.run_job(job_id=job_id, worker_id="w2")
    assert len(calls) == 1
    assert _job(job_id).worker_id == "w1"


def test_a_failing_method_ends_the_job_failed_with_a_readable_error(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def runner(job_id: uuid.UUID, worker_id: str) -> dict[str, Any]:
        raise FileNotFoundError("weights file mobilenet.h5 is missing")

    monkeypatch.setitem(training.METHOD_RUNNERS, WORKER_CHECK, runner)
    job_id = _queued_job()
    training.run_job(job_id=job_id, worker_id="w1")
    job = _job(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error == "FileNotFoundError: weights file mobilenet.h5 is missing"
    assert job.finished_at is not None


def test_a_method_this_worker_cannot_run_fails_the_job(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(training.METHOD_RUNNERS, WORKER_CHECK)
    job_id = _queued_job()
    training.run_job(job_id=job_id, worker_id="w1")
    job = _job(job_id)
    assert job.status == JobStatus.FAILED
    assert "cannot run method 'worker_check'" in (job.error or "")


def test_unknown_job_id_is_ignored(database: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message whose job row does not exist (deleted, or of another database) claims
    nothing, runs nothing and writes nothing."""
    ran: list[uuid.UUID] = []
    monkeypatch.setitem(
        training.METHOD_RUNNERS, WORKER_CHECK, lambda job_id, worker_id: ran.append(job_id) or {}
    )
    unknown = uuid.uuid4()
    assert training.claim_job(job_id=unknown, worker_id="w1") is None
    training.run_job(job_id=unknown, worker_id="w1")
    assert ran == []
    with session_scope() as session:
        assert session.scalar(select(TrainingJob.id)) is None  # no row was made for it


@pytest.mark.parametrize(
    ("dataset_name", "expected"),
    [
        ("My pets!", "My-pets"),
        ("_hidden", "hidden"),
        ("..", "model"),
        ("ünï", "n"),
        ("x" * 300, "x" * 100),
    ],
)
def test_default_model_names_are_valid_store_names(dataset_name: str, expected: str) -> None:
    from models_store import validate_name

    name = jobs.model_name_for(dataset_name)
    assert name == expected
    assert validate_name(name) == name


def test_only_a_process_of_this_exact_host_can_be_declared_dead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lifecycle.socket, "gethostname", lambda: "worker-1")
    gone_pid = "2147483646"  # no such process
    assert lifecycle.process_is_gone(f"celery@worker-1/{gone_pid}")
    # worker-12's job is not worker-1's to take over, though "worker-1" is in "worker-12"
    assert not lifecycle.process_is_gone(f"celery@worker-12/{gone_pid}")
    assert not lifecycle.process_is_gone(f"celery@a-worker-1/{gone_pid}")
    assert not lifecycle.process_is_gone(f"celery@worker-1/{os.getpid()}")  # alive


def test_a_killed_process_nobody_has_reaped_yet_is_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    # A killed worker's pool child is reaped by init, maybe later (a container may have no
    # init at all): until then kill(pid, 0) still finds it, a zombie.
    monkeypatch.setattr(lifecycle.socket, "gethostname", lambda: "worker-1")
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert not lifecycle.process_is_gone(f"celery@worker-1/{child.pid}")
        child.kill()
        wait_until(lambda: _state(child.pid) == "Z", timeout=10, what="the zombie")
        os.kill(child.pid, 0)  # still there for kill...
        assert lifecycle.process_is_gone(f"celery@worker-1/{child.pid}")  # ...but dead
    finally:
        child.kill()
        child.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _record(epoch: int) -> Any:
    from app.ml.fitting import EpochRecord

    return EpochRecord(
        stage="train",
        epoch=epoch,
        loss=1.0,
        accuracy=0.5,
        val_loss=1.0,
        val_accuracy=0.5,
        learning_rate=1e-3,
        seconds=1.0,
    )


def test_a_worker_whose_job_was_taken_over_stops_and_records_nothing(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import update

    from app.db.models import EpochMetric

    def runner(job_id: uuid.UUID, worker_id: str) -> dict[str, Any]:
        reporter = JobReporter(job_id, worker_id, total_epochs=2)
        reporter.on_epoch_end(_record(1))
        with session_scope() as session:  # w1 was thought dead: w2 claimed the job
            session.execute(
                update(TrainingJob).where(TrainingJob.id == job_id).values(worker_id="w2")
            )
        reporter.on_epoch_end(_record(2))  # raises: the job is not w1's any more
        return {"never": "recorded"}

    monkeypatch.setitem(training.METHOD_RUNNERS, WORKER_CHECK, runner)
    job_id = _queued_job()
    training.run_job(job_id=job_id, worker_id="w1")
    job = _job(job_id)
    assert (job.status, job.worker_id, job.result) == (JobStatus.RUNNING, "w2", None)
    with session_scope() as session:
        epochs = session.scalars(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id))
        assert list(epochs) == [1]  # epoch 2 of the stale worker was not written
    # and its outcome cannot be recorded either, whatever it is
    assert not training.finish_job(job_id=job_id, worker_id="w1", status=JobStatus.FAILED)
    assert training.finish_job(job_id=job_id, worker_id="w2", status=JobStatus.SUCCEEDED)


def test_feature_caches_are_per_owner_and_keyed_on_the_dtype_policy(tmp_path) -> None:
    import keras

    from app.ml.features import FeatureRequest, feature_cache_key
    from app.services.storage import owner_key

    alice = owner_key("alice")
    assert alice != owner_key("bob")
    assert "alice" not in alice  # the folder name tells nothing of the owner
    what = {
        "dataset_fingerprint": "f",
        "base_model": "mobilenet",
        "weights_sha256": "w",
        "image_size": 32,
        "request": FeatureRequest(views={"train": ("original",)}, top_inputs=True),
    }
    float32 = feature_cache_key(**what)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        float16 = feature_cache_key(**what)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert float16 != float32
    assert feature_cache_key(**what) == float32


def test_a_requeued_job_starts_its_curves_afresh(database: None) -> None:
    """orphaned_jobs puts a dead worker's job back to queued; its next run must not find the
    old run's epochs (they would collide with its own)."""
    import socket

    from app.db.models import EpochMetric

    host = socket.gethostname()
    job_id = _queued_job()
    dead_worker = f"celery@{host}/{2**22 + 7}"  # beyond pid_max: no such process
    assert training.claim_job(job_id=job_id, worker_id=dead_worker) == WORKER_CHECK
    with session_scope() as session:
        session.add(EpochMetric(job_id=job_id, stage="train", epoch=1, loss=1.0, seconds=1.0))
    assert training.orphaned_jobs(hostname=f"celery@{host}") == [job_id]
    assert training.claim_job(job_id=job_id, worker_id=f"celery@{host}/1") == WORKER_CHECK
    with session_scope() as session:
        assert not list(session.scalars(select(EpochMetric).where(EpochMetric.job_id == job_id)))
