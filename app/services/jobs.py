"""Creating jobs and handing them to the workers."""

from __future__ import annotations

import functools
import re
import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.errors import (
    ConflictError,
    NotFoundError,
    ServiceUnavailableError,
    TooManyRequestsError,
    WeightsMissingError,
)
from app.core.queue import RUN_TRAINING_JOB, send_task
from app.db.base import utcnow
from app.db.locks import lock_key, model_name_key, owner_jobs_key
from app.db.models import (
    REGISTERED_PROGRESS,
    DatasetStatus,
    EpochMetric,
    JobStatus,
    TrainingJob,
)
from app.db.session import after_commit, session_scope
from app.ml.bases import BASES, find_weights, missing_weights_message
from app.ml.config import Method
from app.schemas.jobs import JobCreate
from app.services import model_versions
from app.services.auth import Principal, visible
from app.services.datasets import resolve_dataset_version
from models_store.store import NAME_PATTERN


def create_job(
    session: Session,
    *,
    method: str,
    dataset_id: uuid.UUID | None,
    parameters: dict[str, Any],
    owner: str | None,
    dataset_version: int | None = None,
) -> TrainingJob:
    """Add a queued job (`method`: a training Method, or WORKER_CHECK). The caller commits,
    then calls `enqueue_job`: a worker must see the row."""
    job = TrainingJob(
        owner=owner,
        method=str(method),
        dataset_id=dataset_id,
        dataset_version=dataset_version,
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


def get_job(session: Session, *, job_id: uuid.UUID, principal: Principal) -> TrainingJob:
    """The job with this id if the caller may see it, or NotFoundError."""
    job = session.get(TrainingJob, job_id)
    if job is None or not principal.can_see(job.owner):
        raise NotFoundError(f"job {job_id} not found")
    return job


def submit_job(
    session: Session,
    *,
    method: str,
    dataset_id: uuid.UUID | None,
    parameters: dict[str, Any],
    owner: str | None,
    dataset_version: int | None = None,
) -> TrainingJob:
    """Create a job, to be enqueued once it is committed (a worker must be able to read the
    row when the message arrives); if the broker refuses it then, the job is withdrawn (a job
    the broker never took must not linger as "queued") and the commit raises the refusal."""
    job = create_job(
        session,
        method=method,
        dataset_id=dataset_id,
        parameters=parameters,
        owner=owner,
        dataset_version=dataset_version,
    )
    withdraw = functools.partial(
        _enqueue_or_withdraw, job_id=job.id, model_name=parameters.get("model_name"), owner=owner
    )
    after_commit(session, withdraw)
    return job


def _enqueue_or_withdraw(*, job_id: uuid.UUID, model_name: str | None, owner: str | None) -> None:
    try:
        enqueue_job(job_id=job_id)
    except ServiceUnavailableError:
        with session_scope() as session:
            job = session.get(TrainingJob, job_id)
            if job is not None:
                session.delete(job)
                session.flush()
            if model_name is not None:
                model_versions.release_unused_name(session, name=model_name, owner=owner)
        raise


def model_name_for(dataset_name: str) -> str:
    """A models-store name derived from a dataset name ("My pets!" -> "My-pets"): it must pass
    models_store.validate_name, or the job would only fail after training, when it saves."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset_name).lstrip("-._").rstrip("-.")[:100]
    return slug if NAME_PATTERN.fullmatch(slug) else "model"


def submit_training_job(
    session: Session, *, request: JobCreate, principal: Principal, settings: Settings
) -> TrainingJob:
    """Check the dataset, the model name, the caller's running jobs and the base's weights,
    then create and enqueue a training job owned by the caller.

    The owner's lock comes first: counting the owner's active jobs and adding this one are
    one step, so concurrent requests cannot all pass a limit that only one of them fits."""
    lock_key(session, owner_jobs_key(principal.owner))
    dataset = resolve_dataset_version(
        session,
        dataset_id=request.dataset_id,
        version=request.dataset_version,
        principal=principal,
    )
    _check_active_jobs(session, principal=principal, limit=settings.max_active_jobs_per_owner)
    parameters = request.training().with_defaults(model_name=model_name_for(dataset.name))
    # The name is claimed now, so a second owner asking for it before any version exists is
    # refused here; registration checks it again when the version is saved.
    lock_key(session, model_name_key(parameters.model_name))
    model_versions.claim_name(session, name=parameters.model_name, owner=principal.owner)
    if dataset.status != DatasetStatus.READY.value:
        raise ConflictError(f"dataset {dataset.id} is {dataset.status}, not ready")
    if request.method is not Method.SCRATCH and not settings.allow_weights_download:
        spec = BASES[request.base_model]
        if find_weights(spec, weights_dir=settings.pretrained_weights_dir) is None:
            raise WeightsMissingError(
                missing_weights_message(spec, weights_dir=settings.pretrained_weights_dir)
                + ", or set SMALLVISION_ALLOW_WEIGHTS_DOWNLOAD=true where this machine has "
                "internet"
            )
    return submit_job(
        session,
        method=request.method,
        dataset_id=dataset.id,
        dataset_version=dataset.version,
        parameters=parameters.stored(),
        owner=principal.owner,
    )


def _check_active_jobs(session: Session, *, principal: Principal, limit: int) -> None:
    """At most `limit` jobs of one owner queued or running: one user cannot take every GPU.
    (Call with owner_jobs_key locked.)"""
    active = session.scalar(
        select(func.count())
        .select_from(TrainingJob)
        .where(
            TrainingJob.owner == principal.owner,
            TrainingJob.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
        )
    )
    if active is not None and active >= limit:
        raise TooManyRequestsError(
            f"{active} of your jobs are queued or running (limit {limit}): wait for one to "
            "finish or cancel one",
            headers={"Retry-After": "60"},
        )


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """How many jobs are in each status (every status present, zero included)."""
    rows = session.execute(select(TrainingJob.status, func.count()).group_by(TrainingJob.status))
    counts: dict[str, int] = {status: count for status, count in rows}
    return {status.value: int(counts.get(status.value, 0)) for status in JobStatus}


def list_jobs(
    session: Session,
    *,
    principal: Principal,
    dataset_id: uuid.UUID | None,
    status: JobStatus | None,
    limit: int,
    offset: int,
) -> list[TrainingJob]:
    """The caller's jobs (all for an admin), newest first, optionally of one dataset and/or in
    one status."""
    query = visible(select(TrainingJob), TrainingJob.owner, principal)
    query = query.order_by(TrainingJob.created_at.desc())
    if dataset_id is not None:
        query = query.where(TrainingJob.dataset_id == dataset_id)
    if status is not None:
        query = query.where(TrainingJob.status == status.value)
    return list(session.scalars(query.limit(limit).offset(offset)))


def cancel_job(session: Session, *, job: TrainingJob) -> TrainingJob:
    """Cancel a queued job at once; ask a running one to stop (its worker does within a batch,
    or when it is about to register its model version). Once the version is registered
    (the job's progress is 1.0) it is too late: ConflictError, and the job succeeds."""
    if job.status == JobStatus.QUEUED.value:
        cancelled = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job.id, TrainingJob.status == JobStatus.QUEUED.value)
            .values(status=JobStatus.CANCELLED.value, finished_at=utcnow(), cancel_requested=True)
        )
        if cancelled.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(job)
            if (name := job.parameters.get("model_name")) is not None:
                model_versions.release_unused_name(session, name=name, owner=job.owner)
            return job
        session.refresh(job)  # a worker claimed it meanwhile: cancel it as a running job
    if job.status == JobStatus.RUNNING.value:
        # One statement: a registration committing at this moment either comes first (and
        # this matches nothing) or sees the request (and refuses to register).
        requested = session.execute(
            update(TrainingJob)
            .where(
                TrainingJob.id == job.id,
                TrainingJob.status == JobStatus.RUNNING.value,
                TrainingJob.progress < REGISTERED_PROGRESS,
            )
            .values(cancel_requested=True)
        )
        session.refresh(job)
        if requested.rowcount == 1:  # type: ignore[attr-defined]
            return job
        if job.status == JobStatus.RUNNING.value:
            raise ConflictError(
                f"too late to cancel job {job.id}: its model version is registered and the "
                "job is finishing"
            )
    raise ConflictError(f"job {job.id} is already {job.status}")


def epoch_metrics(session: Session, *, job_id: uuid.UUID) -> list[EpochMetric]:
    """The job's per-epoch curves so far, in order."""
    query = select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
    return list(session.scalars(query))
