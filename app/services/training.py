"""Running a job on a worker: claim it, run its method, record the outcome in the SQL store."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import update

from app.core.config import get_settings
from app.db.base import utcnow
from app.db.models import JobStatus, TrainingJob, TrainingMethod
from app.db.session import session_scope

logger = logging.getLogger(__name__)

# A method runner takes the job id and returns the job's result document.
MethodRunner = Callable[[uuid.UUID], dict[str, Any]]


def _run_worker_check(job_id: uuid.UUID) -> dict[str, Any]:
    from app.ml.runtime import describe_runtime

    return describe_runtime(pretrained_weights_dir=get_settings().pretrained_weights_dir)


METHOD_RUNNERS: dict[str, MethodRunner] = {
    TrainingMethod.WORKER_CHECK.value: _run_worker_check,
}


def claim_job(*, job_id: uuid.UUID, worker_id: str) -> str | None:
    """Move the job from queued to running for this worker; return its method, or None if it
    was not queued (already claimed, finished, cancelled, or a duplicate delivery)."""
    with session_scope() as session:
        claimed = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.QUEUED.value)
            .values(status=JobStatus.RUNNING.value, started_at=utcnow(), worker_id=worker_id)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        job = session.get(TrainingJob, job_id)
        assert job is not None
        return job.method


def finish_job(
    *,
    job_id: uuid.UUID,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Record a running job's final state."""
    with session_scope() as session:
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.RUNNING.value)
            .values(
                status=status.value,
                result=result,
                error=error,
                finished_at=utcnow(),
                progress=1.0 if status is JobStatus.SUCCEEDED else TrainingJob.progress,
            )
        )


def run_job(*, job_id: uuid.UUID, worker_id: str) -> None:
    """Run one job to its end. Safe to call twice for the same job: only a queued job runs."""
    method = claim_job(job_id=job_id, worker_id=worker_id)
    if method is None:
        logger.info("job %s is not queued; nothing to do", job_id)
        return
    runner = METHOD_RUNNERS.get(method)
    if runner is None:
        finish_job(
            job_id=job_id,
            status=JobStatus.FAILED,
            error=f"this worker cannot run method {method!r}",
        )
        return
    logger.info("job %s (%s) started on %s", job_id, method, worker_id)
    try:
        result = runner(job_id)
    except Exception as exc:
        # Any failure inside a method ends the job, with a message the user can read.
        logger.exception("job %s failed", job_id)
        finish_job(job_id=job_id, status=JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        return
    finish_job(job_id=job_id, status=JobStatus.SUCCEEDED, result=result)
    logger.info("job %s succeeded", job_id)
