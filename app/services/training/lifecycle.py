"""A job's life on the workers: claimed once (or taken over from a worker that died), run by
its method, finished with its outcome; jobs of dead processes put back in the queue."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from app.core.config import get_settings
from app.db.base import utcnow
from app.db.models import WORKER_CHECK, EpochMetric, JobStatus, TrainingJob
from app.db.session import session_scope
from app.ml.config import Method
from app.services import model_versions
from app.services.training.ownership import JobCancelledError, JobTakenOverError, owned
from app.services.training.run import run_training

logger = logging.getLogger(__name__)

# A method runner takes the job id and the worker's id and returns the job's result document.
MethodRunner = Callable[[uuid.UUID, str], dict[str, Any]]


def _run_worker_check(_job_id: uuid.UUID, _worker_id: str) -> dict[str, Any]:
    from app.ml.runtime import describe_runtime

    return describe_runtime(pretrained_weights_dir=get_settings().pretrained_weights_dir)


METHOD_RUNNERS: dict[str, MethodRunner] = {
    WORKER_CHECK: _run_worker_check,
    **{method.value: run_training for method in Method},
}


def process_is_gone(worker_id: str | None) -> bool:
    """True if worker_id ("<celery node name>/<pid>", the node name being "<name>@<host>")
    names a process on this very host that is dead. The host must match exactly: a process
    of worker-12 is not one of worker-1's."""
    if not worker_id or "/" not in worker_id:
        return False
    node, _, pid = worker_id.rpartition("/")
    host = node.rpartition("@")[2]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    """A killed process that nobody has reaped yet still answers kill(pid, 0): a killed
    worker's pool child is left to init, which may take its time (or, in a container without
    an init, never come)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # gone since kill answered, unless there is no /proc at all
        return Path("/proc/self").exists()
    except OSError:
        return False
    # "pid (command) state ...": the command may hold spaces and parentheses
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _heartbeat_is_stale(job: TrainingJob) -> bool:
    last = job.heartbeat_at or job.started_at
    timeout = timedelta(seconds=get_settings().job_heartbeat_timeout_seconds)
    return last is None or utcnow() - last > timeout


def claim_job(*, job_id: uuid.UUID, worker_id: str) -> str | None:
    """Move the job to running for this worker and return its method; None if it must not run
    here (finished, cancelled, or running on a live worker). A job whose worker died (process
    gone, or no heartbeat for too long) is taken over and run again from the start."""
    with session_scope() as session:
        job = session.get(TrainingJob, job_id)
        if job is None or job.status not in {JobStatus.QUEUED.value, JobStatus.RUNNING.value}:
            return None
        previous_worker, was_running = job.worker_id, job.status == JobStatus.RUNNING.value
        if was_running and not (process_is_gone(previous_worker) or _heartbeat_is_stale(job)):
            return None
        claimed = session.execute(
            update(TrainingJob)
            .where(
                TrainingJob.id == job_id,
                TrainingJob.status == job.status,
                TrainingJob.worker_id.is_(None)
                if previous_worker is None
                else TrainingJob.worker_id == previous_worker,
            )
            .values(
                status=JobStatus.RUNNING.value,
                started_at=utcnow(),
                heartbeat_at=utcnow(),
                worker_id=worker_id,
                progress=0.0,
                progress_detail={},
            )
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        # A run starts its curves afresh: a job taken over from a dead worker, or requeued by
        # orphaned_jobs (queued again, so was_running is False), has its old epochs removed.
        stale = session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id))
        if was_running or stale.rowcount:  # type: ignore[attr-defined]
            logger.warning("job %s: worker %s died; running it again", job_id, previous_worker)
        return job.method


def finish_job(
    *,
    job_id: uuid.UUID,
    worker_id: str,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """Record a running job's final state, if it still runs on this worker; False if it was
    taken over (its new run will record the outcome). A job that ends without a version
    gives back the model name it claimed, if nothing else holds it."""
    with session_scope() as session:
        finished = session.execute(
            update(TrainingJob)
            .where(owned(job_id, worker_id))
            .values(
                status=status.value,
                result=result,
                error=error,
                finished_at=utcnow(),
                progress=1.0 if status is JobStatus.SUCCEEDED else TrainingJob.progress,
            )
        )
        if finished.rowcount != 1:  # type: ignore[attr-defined]
            return False
        if status is not JobStatus.SUCCEEDED:
            job = session.get(TrainingJob, job_id)
            if job is not None and (name := job.parameters.get("model_name")) is not None:
                model_versions.release_unused_name(session, name=name, owner=job.owner)
        return True


def run_job(*, job_id: uuid.UUID, worker_id: str) -> None:
    """Run one job to its end. Safe to call twice for the same job: only a queued job (or one
    whose worker died) runs."""
    method = claim_job(job_id=job_id, worker_id=worker_id)
    if method is None:
        logger.info("job %s is not runnable here; nothing to do", job_id)
        return
    runner = METHOD_RUNNERS.get(method)
    if runner is None:
        finish_job(
            job_id=job_id,
            worker_id=worker_id,
            status=JobStatus.FAILED,
            error=f"this worker cannot run method {method!r}",
        )
        return
    logger.info("job %s (%s) started on %s", job_id, method, worker_id)
    try:
        result = runner(job_id, worker_id)
    except JobTakenOverError:
        logger.warning("job %s was taken over by another worker; %s stops", job_id, worker_id)
        return
    except JobCancelledError:
        finish_job(job_id=job_id, worker_id=worker_id, status=JobStatus.CANCELLED)
        logger.info("job %s cancelled", job_id)
        return
    except Exception as exc:
        # Any failure inside a method ends the job, with a message the user can read.
        logger.exception("job %s failed", job_id)
        finish_job(
            job_id=job_id,
            worker_id=worker_id,
            status=JobStatus.FAILED,
            error=f"{type(exc).__name__}: {exc}",
        )
        return
    if finish_job(job_id=job_id, worker_id=worker_id, status=JobStatus.SUCCEEDED, result=result):
        logger.info("job %s succeeded", job_id)


def orphaned_jobs(*, hostname: str) -> list[uuid.UUID]:
    """Jobs left running by dead processes of the worker `hostname`, put back in the queue
    state; the caller enqueues them again (used when a worker starts)."""
    with session_scope() as session:
        running = session.scalars(
            select(TrainingJob).where(
                TrainingJob.status == JobStatus.RUNNING.value,
                TrainingJob.worker_id.like(f"{hostname}/%"),
            )
        ).all()
        requeued = []
        for job in running:
            if process_is_gone(job.worker_id):
                job.status = JobStatus.QUEUED.value
                job.worker_id = None
                requeued.append(job.id)
        return requeued
