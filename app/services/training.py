"""Running a job on a worker: claim it, run its method, record curves, outcome and model."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update

from app.core.config import get_settings
from app.db.base import utcnow
from app.db.models import Dataset, EpochMetric, JobStatus, TrainingJob, TrainingMethod
from app.db.session import session_scope
from app.services import model_versions
from app.services.datasets import dataset_folder, load_manifest

if TYPE_CHECKING:
    from app.ml.config import TrainConfig
    from app.ml.train import EpochRecord

logger = logging.getLogger(__name__)

# A method runner takes the job id and returns the job's result document.
MethodRunner = Callable[[uuid.UUID], dict[str, Any]]


class JobCancelledError(Exception):
    """The job was cancelled while it ran."""


def _run_worker_check(job_id: uuid.UUID) -> dict[str, Any]:
    from app.ml.runtime import describe_runtime

    return describe_runtime(pretrained_weights_dir=get_settings().pretrained_weights_dir)


def train_config(method: str, parameters: dict[str, Any]) -> TrainConfig:
    """The ML layer's config from a job's stored parameters."""
    from app.ml.config import Augmentation, TrainConfig

    augmentation = parameters.get("augmentation")
    return TrainConfig(
        method=method,  # type: ignore[arg-type]
        image_size=parameters["image_size"],
        epochs=parameters["epochs"],
        batch_size=parameters["batch_size"],
        learning_rate=parameters["learning_rate"],
        dropout=parameters["dropout"],
        seed=parameters["seed"],
        base_model=parameters.get("base_model", "mobilenet_v2"),
        augmentation=Augmentation(**augmentation) if augmentation is not None else None,
        early_stopping_patience=parameters.get("early_stopping_patience"),
        balance_classes=parameters.get("class_weight") == "auto",
        test_time_flip=parameters.get("test_time_flip", False),
        head_epochs=parameters.get("head_epochs", 10),
    )


class _JobReporter:
    """The training hooks of one job: curves, progress and heartbeat in SQL; cancel checks."""

    def __init__(self, job_id: uuid.UUID, total_epochs: int) -> None:
        self.job_id = job_id
        self.total_epochs = total_epochs

    def on_epoch_end(self, record: EpochRecord) -> None:
        with session_scope() as session:
            session.add(
                EpochMetric(
                    job_id=self.job_id, stage=record.stage, epoch=record.epoch,
                    loss=record.loss, accuracy=record.accuracy, val_loss=record.val_loss,
                    val_accuracy=record.val_accuracy, learning_rate=record.learning_rate,
                    seconds=record.seconds,
                )
            )  # fmt: skip
            session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == self.job_id)
                .values(
                    progress=min(record.epoch / self.total_epochs, 0.99),
                    progress_detail={"stage": record.stage, "epoch": record.epoch,
                                     "epochs": self.total_epochs},
                    heartbeat_at=utcnow(),
                )
            )  # fmt: skip

    def on_progress(self, detail: dict[str, Any]) -> None:
        with session_scope() as session:
            session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == self.job_id)
                .values(progress_detail={**detail, "epochs": self.total_epochs},
                        heartbeat_at=utcnow())
            )  # fmt: skip

    def should_stop(self) -> bool:
        with session_scope() as session:
            return bool(
                session.scalar(
                    select(TrainingJob.cancel_requested).where(TrainingJob.id == self.job_id)
                )
            )


def _run_training(job_id: uuid.UUID) -> dict[str, Any]:
    from app.ml.data import ManifestSplits
    from app.ml.runtime import configure_devices
    from app.ml.serving import write_model_files
    from app.ml.train import PretrainedSource, TrainingHooks, train

    settings = get_settings()
    with session_scope() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            raise LookupError("the job's dataset was deleted")
        method, parameters, owner = job.method, dict(job.parameters), job.owner
        manifest = load_manifest(dataset, settings=settings)
        folder = dataset_folder(dataset, settings=settings)
        fingerprint, dataset_name = dataset.fingerprint or "", dataset.name
    gpus = configure_devices(mixed_precision=settings.mixed_precision)
    config = train_config(method, parameters)
    total = config.epochs + (config.head_epochs if method == "finetune" else 0)
    reporter = _JobReporter(job_id, total)
    splits = ManifestSplits(
        manifest, dataset_dir=folder, image_size=config.image_size,
        max_pixels=settings.max_image_pixels,
    )  # fmt: skip
    outcome = train(
        config,
        splits=splits,
        hooks=TrainingHooks(
            on_epoch_end=reporter.on_epoch_end,
            on_progress=reporter.on_progress,
            should_stop=reporter.should_stop,
        ),
        pretrained=PretrainedSource(
            weights_dir=settings.pretrained_weights_dir,
            allow_download=settings.allow_weights_download,
            feature_cache_dir=settings.feature_cache_dir,
            dataset_fingerprint=fingerprint,
        ),
    )
    if outcome.cancelled:
        raise JobCancelledError("cancelled while training")
    summary = {
        "method": method,
        "best_epoch": outcome.best_epoch,
        "test_accuracy": outcome.evaluation["accuracy"] if outcome.evaluation else None,
        "evaluated_on": outcome.evaluation["split"] if outcome.evaluation else None,
    }
    meta = {
        "job_id": str(job_id),
        "dataset": {"id": str(dataset.id), "name": dataset_name, "fingerprint": fingerprint},
        "method": method,
        "parameters": parameters,
        "classes": manifest["classes"],
        "input": {"pixels": "RGB 0..255, any size; the model resizes and preprocesses",
                  "image_size": config.image_size},
        "output": "sigmoid (probability of classes[1])" if len(manifest["classes"]) == 2
        else "softmax",
        "summary": summary,
        "gpus": gpus,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="model-", dir=settings.data_dir) as tmp:
        build = Path(tmp)
        write_model_files(build, model=outcome.model, classes=manifest["classes"], metadata=meta)
        version = model_versions.register_version(
            name=parameters["model_name"], job_id=job_id, owner=owner, source_dir=build,
            metadata=meta, metrics_summary=summary,
        )  # fmt: skip
    return {
        "evaluation": outcome.evaluation,
        "best_epoch": outcome.best_epoch,
        "model": {"name": version.name, "version": version.version, "id": str(version.id)},
        **outcome.details,
    }


METHOD_RUNNERS: dict[str, MethodRunner] = {
    TrainingMethod.WORKER_CHECK.value: _run_worker_check,
    TrainingMethod.SCRATCH.value: _run_training,
    TrainingMethod.BOTTLENECK.value: _run_training,
    TrainingMethod.FINETUNE.value: _run_training,
}


def _process_is_gone(worker_id: str | None) -> bool:
    """True if worker_id ("<celery hostname>/<pid>") names a process on this host that is dead."""
    if not worker_id or "/" not in worker_id:
        return False
    hostname, _, pid = worker_id.rpartition("/")
    if socket.gethostname() not in hostname or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
        previous_worker = job.worker_id
        if job.status == JobStatus.RUNNING.value and not (
            _process_is_gone(previous_worker) or _heartbeat_is_stale(job)
        ):
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
                status=JobStatus.RUNNING.value, started_at=utcnow(), heartbeat_at=utcnow(),
                worker_id=worker_id, progress=0.0, progress_detail={},
            )
        )  # fmt: skip
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        if job.status == JobStatus.RUNNING.value:
            logger.warning("job %s: worker %s died; running it again", job_id, previous_worker)
            session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id))
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
            status=JobStatus.FAILED,
            error=f"this worker cannot run method {method!r}",
        )
        return
    logger.info("job %s (%s) started on %s", job_id, method, worker_id)
    try:
        result = runner(job_id)
    except JobCancelledError:
        finish_job(job_id=job_id, status=JobStatus.CANCELLED, error=None)
        logger.info("job %s cancelled", job_id)
        return
    except Exception as exc:
        # Any failure inside a method ends the job, with a message the user can read.
        logger.exception("job %s failed", job_id)
        finish_job(job_id=job_id, status=JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        return
    finish_job(job_id=job_id, status=JobStatus.SUCCEEDED, result=result)
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
            if _process_is_gone(job.worker_id):
                job.status = JobStatus.QUEUED.value
                job.worker_id = None
                requeued.append(job.id)
        return requeued
