"""Training jobs: start, list, inspect, cancel, and their curves; the worker check."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.bodies import json_body_openapi
from app.api.deps import MAX_OFFSET, Admin, JobRequest, SessionDep, Trainer, ValidJob
from app.core.config import get_settings
from app.db.models import WORKER_CHECK, JobStatus
from app.schemas.jobs import (
    EpochRead,
    JobAccepted,
    JobCreate,
    JobMetrics,
    JobPredictions,
    JobRead,
)
from app.schemas.results import JobResult
from app.services import job_predictions, jobs, plots

router = APIRouter(tags=["jobs"])


@router.post(
    "/jobs",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        400: {"description": "the base model's pretrained weights are not on this machine"},
        404: {"description": "unknown dataset"},
        503: {"description": "the broker is unreachable"},
    },
    openapi_extra=json_body_openapi(JobCreate),
)
def create_job(request: JobRequest, session: SessionDep, principal: Trainer) -> JobAccepted:
    """Start training: `auto` (the default: bottleneck, then fine-tuning from it; the better
    on validation is kept), `scratch`, `bottleneck` (a head on a frozen ImageNet base's cached
    features) or `finetune` (that head, then the base's top block at a low learning rate)."""
    job = jobs.submit_training_job(
        session, request=request, principal=principal, settings=get_settings()
    )
    return JobAccepted(id=job.id, status=JobStatus(job.status))


# exclude_unset: a result keeps the fields it was stored with (older ones have fewer)
@router.get("/jobs", response_model=list[JobRead], response_model_exclude_unset=True)
def list_jobs(
    session: SessionDep,
    principal: Trainer,
    dataset_id: uuid.UUID | None = None,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[JobRead]:
    """Jobs, newest first; filter by dataset and/or status."""
    found = jobs.list_jobs(
        session,
        principal=principal,
        dataset_id=dataset_id,
        status=status,
        limit=limit,
        offset=offset,
    )
    return [JobRead.model_validate(job) for job in found]


@router.get("/jobs/{job_id}", response_model=JobRead, response_model_exclude_unset=True)
def read_job(job: ValidJob) -> JobRead:
    """A job's status, progress, timestamps, result and error."""
    return JobRead.model_validate(job)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobRead,
    response_model_exclude_unset=True,
    responses={409: {"description": "the job has already finished"}},
)
def cancel_job(job: ValidJob, session: SessionDep) -> JobRead:
    """Cancel a queued job, or stop a running one within one batch."""
    return JobRead.model_validate(jobs.cancel_job(session, job=job))


@router.get("/jobs/{job_id}/metrics", response_model=JobMetrics, response_model_exclude_unset=True)
def job_metrics(job: ValidJob, session: SessionDep) -> JobMetrics:
    """Per-epoch curves (available while the job runs) and, once done, the evaluation."""
    result = (
        JobResult.model_validate(job.result)
        if job.result is not None and job.method != WORKER_CHECK
        else None
    )
    return JobMetrics(
        job_id=job.id,
        status=JobStatus(job.status),
        progress=job.progress,
        epochs=[EpochRead.model_validate(m) for m in jobs.epoch_metrics(session, job_id=job.id)],
        best_epoch=result.best_epoch if result else None,
        evaluation=result.evaluation if result else None,
        candidates=result.candidates if result else [],
        chosen=result.chosen if result else None,
        warnings=result.warnings if result else [],
    )


@router.get(
    "/jobs/{job_id}/metrics.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def job_metrics_png(job: ValidJob, session: SessionDep) -> Response:
    """Training vs validation accuracy and loss per epoch, as a picture."""
    png = plots.curves_png(jobs.epoch_metrics(session, job_id=job.id), title=f"job {job.id}")
    return Response(content=png, media_type="image/png")


@router.get(
    "/jobs/{job_id}/confusion.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 409: {"description": "not evaluated yet"}},
)
def job_confusion_png(job: ValidJob) -> Response:
    """The confusion matrix of the final evaluation, as a picture."""
    return Response(content=plots.confusion_png(job), media_type="image/png")


@router.get(
    "/jobs/{job_id}/predictions",
    response_model=JobPredictions,
    responses={
        400: {"description": "a label that is not a class of the model"},
        404: {"description": "no such job, or its model version was deleted"},
        409: {"description": "the job has not succeeded"},
    },
)
def job_answers(
    job: ValidJob,
    session: SessionDep,
    mistakes: bool = False,
    true_label: Annotated[str | None, Query(max_length=200)] = None,
    predicted_label: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobPredictions:
    """The evaluation image by image: each image of the split the job's model was evaluated
    on with its true labels, the answer, every class's probability and whether it is right.
    `mistakes=true` keeps the wrong ones; `true_label` and `predicted_label` (both: a cell of
    the confusion matrix) keep those with that label."""
    return job_predictions.list_answers(
        session,
        job=job,
        filters=job_predictions.AnswerFilter(
            mistakes=mistakes, true_label=true_label, predicted_label=predicted_label
        ),
        offset=offset,
        limit=limit,
    )


@router.post(
    "/workers/check",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={503: {"description": "the broker is unreachable"}},
)
def check_workers(session: SessionDep, principal: Admin) -> JobAccepted:
    """Queue a job that makes a training worker report its TensorFlow version, devices
    (GPUs) and pretrained weight files: proof that a worker picks jobs up and can train."""
    job = jobs.submit_job(
        session,
        method=WORKER_CHECK,
        dataset_id=None,
        parameters={},
        owner=principal.owner,
    )
    return JobAccepted(id=job.id, status=JobStatus(job.status))
