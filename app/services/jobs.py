"""Creating jobs and handing them to the workers."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import NotFoundError, ServiceUnavailableError
from app.core.queue import RUN_TRAINING_JOB, send_task
from app.db.models import JobStatus, TrainingJob, TrainingMethod


def create_job(
    session: Session,
    *,
    method: TrainingMethod,
    dataset_id: uuid.UUID | None,
    parameters: dict[str, Any],
) -> TrainingJob:
    """Add a queued job. The caller commits, then calls `enqueue_job`: a worker must see the row."""
    job = TrainingJob(
        method=method.value,
        dataset_id=dataset_id,
        parameters=parameters,
        status=JobStatus.QUEUED.value,
        progress=0.0,
        progress_detail={},
    )
    session.add(job)
    session.flush()
    return job


def enqueue_job(*, job_id: uuid.UUID) -> None:
    """Send a committed job to the training queue by task name."""
    send_task(RUN_TRAINING_JOB, args=[str(job_id)], queue=get_settings().training_queue)


def get_job(session: Session, *, job_id: uuid.UUID) -> TrainingJob:
    """The job with this id, or NotFoundError."""
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


def submit_job(
    session: Session,
    *,
    method: TrainingMethod,
    dataset_id: uuid.UUID | None,
    parameters: dict[str, Any],
) -> TrainingJob:
    """Create a job, commit it, then enqueue it; if the broker refuses, delete the row again.

    This is the one service that commits: a worker must be able to read the row when the
    message arrives, and a job the broker never took must not linger as "queued".
    """
    job = create_job(session, method=method, dataset_id=dataset_id, parameters=parameters)
    session.commit()
    try:
        enqueue_job(job_id=job.id)
    except ServiceUnavailableError:
        session.delete(job)
        session.commit()
        raise
    return job
