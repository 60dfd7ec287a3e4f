"""Which worker runs a job: every write of a run is conditional on the job still running on
that worker, and its registration on nobody having asked to cancel it."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import REGISTERED_PROGRESS, JobStatus, TrainingJob


class JobCancelledError(Exception):
    """The job was cancelled while it ran."""


class JobTakenOverError(Exception):
    """Another worker runs this job now (this one was thought dead): stop, record nothing."""


def owned(job_id: uuid.UUID, worker_id: str) -> Any:
    """The SQL condition "this job is running on this worker"."""
    return (
        (TrainingJob.id == job_id)
        & (TrainingJob.status == JobStatus.RUNNING.value)
        & (TrainingJob.worker_id == worker_id)
    )


def ensure_still_owned(session: Session, *, job_id: uuid.UUID, worker_id: str) -> None:
    """JobTakenOverError unless the job still runs on this worker (row-locked on PostgreSQL
    until the transaction ends, so the answer holds for what the transaction writes)."""
    found = session.scalar(select(TrainingJob.id).where(owned(job_id, worker_id)).with_for_update())
    if found is None:
        raise JobTakenOverError(f"job {job_id} is no longer running on {worker_id}")


def allow_registration(session: Session, *, job_id: uuid.UUID, worker_id: str) -> None:
    """In the transaction that registers the job's model version: the job must still run on
    this worker (JobTakenOverError) and nobody may have asked to cancel it
    (JobCancelledError: the version is not registered). Marks it registered (progress 1.0),
    after which a cancel is refused: the two are decided by one row, in one order."""
    marked = session.execute(
        update(TrainingJob)
        .where(owned(job_id, worker_id), TrainingJob.cancel_requested.is_(False))
        .values(
            progress=REGISTERED_PROGRESS,
            progress_detail={"stage": "registered"},
            heartbeat_at=utcnow(),
        )
    )
    if marked.rowcount == 1:  # type: ignore[attr-defined]
        return
    ensure_still_owned(session, job_id=job_id, worker_id=worker_id)
    raise JobCancelledError("cancelled before its model version was registered")
