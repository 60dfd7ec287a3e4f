"""Jobs: status of any job, and the worker check that proves a worker can run jobs."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import SessionDep, ValidJob
from app.db.models import TrainingMethod
from app.schemas.jobs import JobAccepted, JobRead
from app.services import jobs

router = APIRouter(tags=["jobs"])


@router.get("/jobs/{job_id}", response_model=JobRead)
def read_job(job: ValidJob) -> JobRead:
    """A job's status, progress, timestamps, result and error."""
    return JobRead.model_validate(job)


@router.post(
    "/workers/check",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={503: {"description": "the broker is unreachable"}},
)
def check_workers(session: SessionDep) -> JobAccepted:
    """Queue a job that makes a training worker report its TensorFlow version, devices
    (GPUs) and pretrained weight files: proof that a worker picks jobs up and can train."""
    job = jobs.submit_job(
        session, method=TrainingMethod.WORKER_CHECK, dataset_id=None, parameters={}
    )
    return JobAccepted(id=job.id, status=job.status)
