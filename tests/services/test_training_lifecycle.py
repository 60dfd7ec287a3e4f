"""The job lifecycle a worker drives: claim once, run the method, record success or failure."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.db.models import JobStatus, TrainingJob, TrainingMethod
from app.db.session import session_scope
from app.services import jobs, training
from tests.conftest import migrate


@pytest.fixture
def database(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url)
    migrate(sqlite_url)


def _queued_job(method: TrainingMethod = TrainingMethod.WORKER_CHECK) -> uuid.UUID:
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

    def runner(job_id: uuid.UUID) -> dict[str, Any]:
        calls.append(job_id)
        assert _job(job_id).status == JobStatus.RUNNING  # the row says running while it runs
        return {"answer": 42}

    monkeypatch.setitem(training.METHOD_RUNNERS, TrainingMethod.WORKER_CHECK.value, runner)
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
        TrainingMethod.WORKER_CHECK.value,
        lambda job_id: calls.append(job_id) or {},
    )
    job_id = _queued_job()
    training.run_job(job_id=job_id, worker_id="w1")
    training.run_job(job_id=job_id, worker_id="w2")
    assert len(calls) == 1
    assert _job(job_id).worker_id == "w1"


def test_a_failing_method_ends_the_job_failed_with_a_readable_error(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def runner(job_id: uuid.UUID) -> dict[str, Any]:
        raise FileNotFoundError("weights file mobilenet.h5 is missing")

    monkeypatch.setitem(training.METHOD_RUNNERS, TrainingMethod.WORKER_CHECK.value, runner)
    job_id = _queued_job()
    training.run_job(job_id=job_id, worker_id="w1")
    job = _job(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error == "FileNotFoundError: weights file mobilenet.h5 is missing"
    assert job.finished_at is not None


def test_a_method_this_worker_cannot_run_fails_the_job(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(training.METHOD_RUNNERS, TrainingMethod.WORKER_CHECK.value)
    job_id = _queued_job()
    training.run_job(job_id=job_id, worker_id="w1")
    job = _job(job_id)
    assert job.status == JobStatus.FAILED
    assert "cannot run method 'worker_check'" in (job.error or "")


def test_unknown_job_id_is_ignored(database: None) -> None:
    training.run_job(job_id=uuid.uuid4(), worker_id="w1")  # no row: nothing to claim, no error


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
