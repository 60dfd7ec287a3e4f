"""How a job ends against what is asked of it meanwhile, on SQLite and PostgreSQL: a cancel
that arrives while the model is being saved, and the model name of a job that made nothing."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from app.core.errors import ConflictError
from app.db.locks import lock_key, model_name_key
from app.db.models import JobStatus, ModelName, ModelVersion, TrainingJob
from app.db.session import session_scope
from app.services import jobs, model_versions, training
from tests.conftest import migrate

WORKER = "worker-1@host/123"


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, configure) -> None:
    url = str(request.getfixturevalue(f"{request.param}_url"))
    configure(database_url=url)
    migrate(url)


def _job(*, name: str = "pets", owner: str = "alice", running: bool = True) -> uuid.UUID:
    """A job that asked for model `name` (claimed at submit, as POST /jobs does)."""
    with session_scope() as session:
        lock_key(session, model_name_key(name))
        model_versions.claim_name(session, name=name, owner=owner)
        job = jobs.create_job(
            session,
            method="bottleneck",
            dataset_id=None,
            owner=owner,
            parameters={"model_name": name},
        )
        job_id = job.id
    if running:
        assert training.claim_job(job_id=job_id, worker_id=WORKER) == "bottleneck"
    return job_id


def _register(job_id: uuid.UUID, tmp_path: Path, *, name: str = "pets") -> ModelVersion:
    """Register a version for the job as its worker does at the end of a run."""
    files = tmp_path / f"model-{uuid.uuid4().hex}"
    files.mkdir()
    (files / "model.keras").write_bytes(b"weights")
    return model_versions.register_version(
        name=name,
        job_id=job_id,
        owner="alice",
        source_dir=files,
        metadata={},
        metrics_summary={},
        still_valid=lambda session: training.allow_registration(
            session, job_id=job_id, worker_id=WORKER
        ),
    )


def _cancel(job_id: uuid.UUID) -> TrainingJob:
    with session_scope() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        return jobs.cancel_job(session, job=job)


def _versions(name: str = "pets") -> list[int]:
    with session_scope() as session:
        return list(session.scalars(select(ModelVersion.version).where(ModelVersion.name == name)))


def _name_row(name: str = "pets") -> ModelName | None:
    with session_scope() as session:
        return session.get(ModelName, name)


def test_a_cancel_before_registration_stops_the_version(database, tmp_path: Path) -> None:
    job_id = _job()
    assert _cancel(job_id).cancel_requested
    with pytest.raises(training.JobCancelledError):
        _register(job_id, tmp_path)
    assert _versions() == []
    assert model_versions.model_store().latest_version("pets") == 0  # its files went too


def test_a_cancel_after_registration_is_too_late(database, tmp_path: Path) -> None:
    job_id = _job()
    registered = _register(job_id, tmp_path)
    with pytest.raises(ConflictError, match="too late to cancel"):
        _cancel(job_id)
    assert training.finish_job(job_id=job_id, worker_id=WORKER, status=JobStatus.SUCCEEDED)
    with session_scope() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None and job.status == "succeeded" and not job.cancel_requested
    assert _versions() == [registered.version]


def test_a_cancel_during_the_registering_transaction_waits_and_is_refused(
    database, tmp_path: Path
) -> None:
    """The registration holds the job's row (PostgreSQL) or the write lock (SQLite) until
    it commits; a cancel sent meanwhile waits for it and then finds the version registered."""
    job_id = _job()
    marked, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def register() -> None:
        with session_scope() as session:
            training.allow_registration(session, job_id=job_id, worker_id=WORKER)
            marked.set()
            release.wait(10)

    def cancel() -> None:
        try:
            outcome["job"] = _cancel(job_id)
        except ConflictError as exc:
            outcome["error"] = exc.detail

    registering = threading.Thread(target=register)
    registering.start()
    assert marked.wait(10)
    cancelling = threading.Thread(target=cancel)
    cancelling.start()
    time.sleep(0.3)
    assert "job" not in outcome and "error" not in outcome  # it waits for the registration
    release.set()
    registering.join(10)
    cancelling.join(10)
    assert str(outcome.get("error", "")).startswith("too late to cancel"), outcome


def test_a_cancelled_queued_job_gives_its_model_name_back(database) -> None:
    job_id = _job(running=False)
    assert _name_row() is not None
    assert _cancel(job_id).status == "cancelled"
    assert _name_row() is None
    _job(owner="bob", running=False)  # someone else may have it now
    assert _name_row().owner == "bob"


def test_a_failed_or_cancelled_run_gives_its_model_name_back(database) -> None:
    failed = _job()
    assert training.finish_job(job_id=failed, worker_id=WORKER, status=JobStatus.FAILED)
    assert _name_row() is None
    cancelled = _job()
    assert training.finish_job(job_id=cancelled, worker_id=WORKER, status=JobStatus.CANCELLED)
    assert _name_row() is None


def test_a_name_stays_claimed_while_it_holds_anything(database, tmp_path: Path) -> None:
    first, second = _job(), _job(running=False)  # two jobs of alice's want the name
    assert training.finish_job(job_id=first, worker_id=WORKER, status=JobStatus.FAILED)
    assert _name_row() is not None  # the second one still wants it
    assert _cancel(second).status == "cancelled"
    assert _name_row() is None
    third = _job()
    _register(third, tmp_path)
    assert training.finish_job(job_id=third, worker_id=WORKER, status=JobStatus.SUCCEEDED)
    fourth = _job()
    assert training.finish_job(job_id=fourth, worker_id=WORKER, status=JobStatus.FAILED)
    assert _name_row() is not None  # it has a version


def test_the_409_for_a_claimed_name_says_nothing_of_its_owner(database) -> None:
    _job(running=False)
    with pytest.raises(ConflictError) as refused:
        _job(owner="bob", running=False)
    assert refused.value.detail == "model_name 'pets' is not available: choose another"
