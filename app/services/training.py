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
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.db.base import utcnow
from app.db.models import (
    REGISTERED_PROGRESS,
    WORKER_CHECK,
    Dataset,
    EpochMetric,
    JobStatus,
    TrainingJob,
)
from app.db.session import session_scope
from app.ml.config import Method
from app.services import model_versions
from app.services.datasets import load_manifest, local_images
from app.services.storage import ObjectMirror, get_storage, owner_key
from models_store import file_sha256

if TYPE_CHECKING:
    from app.ml.config import TrainConfig
    from app.ml.fitting import EpochRecord, TrainingHooks
    from app.ml.train import PretrainedSource

logger = logging.getLogger(__name__)

# A method runner takes the job id and the worker's id and returns the job's result document.
MethodRunner = Callable[[uuid.UUID, str], dict[str, Any]]


class JobCancelledError(Exception):
    """The job was cancelled while it ran."""


class JobTakenOverError(Exception):
    """Another worker runs this job now (this one was thought dead): stop, record nothing."""


def _owned(job_id: uuid.UUID, worker_id: str) -> Any:
    """The SQL condition "this job is running on this worker"."""
    return (
        (TrainingJob.id == job_id)
        & (TrainingJob.status == JobStatus.RUNNING.value)
        & (TrainingJob.worker_id == worker_id)
    )


def ensure_still_owned(session: Session, *, job_id: uuid.UUID, worker_id: str) -> None:
    """JobTakenOverError unless the job still runs on this worker (row-locked on PostgreSQL
    until the transaction ends, so the answer holds for what the transaction writes)."""
    owned = session.scalar(
        select(TrainingJob.id).where(_owned(job_id, worker_id)).with_for_update()
    )
    if owned is None:
        raise JobTakenOverError(f"job {job_id} is no longer running on {worker_id}")


def allow_registration(session: Session, *, job_id: uuid.UUID, worker_id: str) -> None:
    """In the transaction that registers the job's model version: the job must still run on
    this worker (JobTakenOverError) and nobody may have asked to cancel it
    (JobCancelledError: the version is not registered). Marks it registered (progress 1.0),
    after which a cancel is refused: the two are decided by one row, in one order."""
    marked = session.execute(
        update(TrainingJob)
        .where(_owned(job_id, worker_id), TrainingJob.cancel_requested.is_(False))
        .values(
            progress=REGISTERED_PROGRESS, progress_detail={"stage": "registered"},
            heartbeat_at=utcnow(),
        )
    )  # fmt: skip
    if marked.rowcount == 1:  # type: ignore[attr-defined]
        return
    ensure_still_owned(session, job_id=job_id, worker_id=worker_id)
    raise JobCancelledError("cancelled before its model version was registered")


def _run_worker_check(job_id: uuid.UUID, worker_id: str) -> dict[str, Any]:
    from app.ml.runtime import describe_runtime

    return describe_runtime(pretrained_weights_dir=get_settings().pretrained_weights_dir)


def train_config(method: str, parameters: dict[str, Any]) -> TrainConfig:
    """The ML layer's config from a job's stored parameters (every default already filled in
    by app.services.jobs.training_parameters)."""
    from app.ml.bases import DEFAULT_BASE
    from app.ml.config import Augmentation, HeadKind, Method, TrainConfig

    augmentation = parameters.get("augmentation")
    optional = {
        name: parameters[name]
        for name in ("head_epochs", "label_smoothing")
        if parameters.get(name) is not None
    }
    return TrainConfig(
        method=Method(method),
        image_size=parameters["image_size"],
        epochs=parameters["epochs"],
        batch_size=parameters["batch_size"],
        learning_rate=parameters["learning_rate"],
        dropout=parameters["dropout"],
        seed=parameters["seed"],
        base_model=parameters.get("base_model", DEFAULT_BASE.value),
        augmentation=Augmentation(**augmentation) if augmentation is not None else None,
        early_stopping_patience=parameters.get("early_stopping_patience"),
        balance_classes=parameters.get("class_weight") == "auto",
        test_time_flip=parameters.get("test_time_flip", False),
        # jobs stored before the field existed run as they were asked
        refit_on_validation=parameters.get("refit_on_validation", False),
        head=HeadKind(parameters.get("head", HeadKind.AUTO.value)),
        **optional,
    )


def pretrained_source(
    base_model: str, *, owner: str | None, fingerprint: str, hooks: TrainingHooks
) -> PretrainedSource:
    """The base's weights file (downloaded into the Keras cache when allowed and missing)
    with its checksum, and the owner's feature cache."""
    from app.ml.bases import (
        BASES,
        BaseName,
        WeightsNotFoundError,
        download_weights,
        find_weights,
        missing_weights_message,
        weights_url,
    )
    from app.ml.train import PretrainedSource

    settings = get_settings()
    spec = BASES[BaseName(base_model)]
    path = find_weights(spec, weights_dir=settings.pretrained_weights_dir)
    if path is None:
        if not settings.allow_weights_download:
            raise WeightsNotFoundError(
                missing_weights_message(spec, weights_dir=settings.pretrained_weights_dir)
            )
        hooks.on_progress({"stage": "downloading weights", "file": spec.weight_files[0]})
        path = download_weights(
            spec, url=weights_url(spec, mirror=settings.weights_download_url),
            timeout=settings.weights_download_timeout_seconds,
        )  # fmt: skip
    storage = get_storage()
    # Each owner has a feature cache of their own: a hit on features of another owner's
    # identical images would tell that someone else has them.
    folder = owner_key(owner)
    return PretrainedSource(
        weights_path=path,
        weights_sha256=file_sha256(path),
        feature_cache_dir=settings.feature_cache_dir / folder
        if storage.is_local
        else storage.cache_dir / "features" / folder,
        feature_mirror=None if storage.is_local else ObjectMirror(storage.features, folder),
        dataset_fingerprint=fingerprint,
        onnx_extraction=settings.onnx_feature_extraction,
    )


class _JobReporter:
    """The training hooks of one job: curves, progress and heartbeat in SQL; cancel checks.
    Every write is conditional on the job still running on this worker: a worker that was
    taken for dead (and replaced) stops at its next report instead of writing over the new
    run's curves."""

    def __init__(self, job_id: uuid.UUID, worker_id: str, total_epochs: int) -> None:
        self.job_id = job_id
        self.worker_id = worker_id
        self.total_epochs = total_epochs

    def _report(self, session: Session, **values: Any) -> None:
        updated = session.execute(
            update(TrainingJob)
            .where(_owned(self.job_id, self.worker_id))
            .values(heartbeat_at=utcnow(), **values)
        )
        if updated.rowcount != 1:  # type: ignore[attr-defined]
            raise JobTakenOverError(f"job {self.job_id} is no longer running on {self.worker_id}")

    def on_epoch_end(self, record: EpochRecord) -> None:
        with session_scope() as session:
            self._report(
                session,
                progress=min(record.epoch / self.total_epochs, 0.99),
                progress_detail={"stage": record.stage, "epoch": record.epoch,
                                 "epochs": self.total_epochs},
            )  # fmt: skip
            session.add(
                EpochMetric(
                    job_id=self.job_id, stage=record.stage, epoch=record.epoch,
                    loss=record.loss, accuracy=record.accuracy, val_loss=record.val_loss,
                    val_accuracy=record.val_accuracy, learning_rate=record.learning_rate,
                    seconds=record.seconds,
                )
            )  # fmt: skip

    def on_progress(self, detail: dict[str, Any]) -> None:
        with session_scope() as session:
            self._report(session, progress_detail={**detail, "epochs": self.total_epochs})

    def should_stop(self) -> bool:
        with session_scope() as session:
            return bool(
                session.scalar(
                    select(TrainingJob.cancel_requested).where(TrainingJob.id == self.job_id)
                )
            )


def _run_training(job_id: uuid.UUID, worker_id: str) -> dict[str, Any]:
    from app.ml.config import PRETRAINED_METHODS
    from app.ml.data import ManifestSplits
    from app.ml.fitting import CancelledError, TrainingHooks
    from app.ml.runtime import configure_devices
    from app.ml.serving import write_model_files
    from app.ml.train import train

    settings = get_settings()
    with session_scope() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            raise LookupError("the job's dataset was deleted")
        method, parameters, owner = job.method, dict(job.parameters), job.owner
        manifest = load_manifest(dataset.id)
        dataset_id = dataset.id
        fingerprint, dataset_name = dataset.fingerprint or "", dataset.name
        # Which images the model learned from: every version of a dataset stays trainable.
        dataset_record = {
            "id": str(dataset.id), "name": dataset_name, "version": dataset.version,
            "lineage_id": str(dataset.lineage_id), "fingerprint": fingerprint,
        }  # fmt: skip
    gpus = configure_devices(mixed_precision=settings.mixed_precision)
    config = train_config(method, parameters)
    reporter = _JobReporter(job_id, worker_id, config.most_epochs)
    hooks = TrainingHooks(
        on_epoch_end=reporter.on_epoch_end,
        on_progress=reporter.on_progress,
        should_stop=reporter.should_stop,
    )
    splits = ManifestSplits(
        manifest, files=lambda items: local_images(dataset_id, items),
        image_size=config.image_size, max_pixels=settings.max_image_pixels,
        on_progress=reporter.on_progress,
    )  # fmt: skip
    pretrained = None
    if config.method in PRETRAINED_METHODS:
        pretrained = pretrained_source(
            config.base_model, owner=owner, fingerprint=fingerprint, hooks=hooks
        )
    try:
        outcome = train(config, splits=splits, hooks=hooks, pretrained=pretrained)
    except CancelledError as exc:
        raise JobCancelledError(str(exc)) from exc
    summary = {
        "method": outcome.method.value,
        "requested_method": method,
        "best_epoch": outcome.best_epoch,
        "test_accuracy": outcome.evaluation["accuracy"] if outcome.evaluation else None,
        "evaluated_on": outcome.evaluation["split"] if outcome.evaluation else None,
        "validation_accuracy": outcome.details.get("validation_accuracy"),
        "warnings": outcome.warnings,
        "dataset": dataset_record,
    }
    meta = {
        "job_id": str(job_id),
        "dataset": dataset_record,
        "method": outcome.method.value,
        "parameters": parameters,
        "classes": manifest["classes"],
        "input": {"pixels": "RGB 0..255, any size; the model resizes and preprocesses",
                  "image_size": config.image_size},
        "output": "softmax over classes" if outcome.method is not Method.SCRATCH
        or len(manifest["classes"]) != 2 else "sigmoid (probability of classes[1])",
        "summary": summary,
        "gpus": gpus,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="model-", dir=settings.data_dir) as tmp:
        build = Path(tmp)
        reporter.on_progress({"stage": "saving"})
        meta["exports"] = write_model_files(
            build, model=outcome.model, classes=manifest["classes"], metadata=meta,
            onnx=settings.export_onnx,
        )  # fmt: skip
        reporter.on_progress({"stage": "registering"})
        version = model_versions.register_version(
            name=parameters["model_name"], job_id=job_id, owner=owner, source_dir=build,
            metadata=meta, metrics_summary=summary, may_activate=outcome.beats_chance,
            still_valid=lambda session: allow_registration(
                session, job_id=job_id, worker_id=worker_id
            ),
        )  # fmt: skip
    return {
        "method": outcome.method.value,
        "evaluation": outcome.evaluation,
        "best_epoch": outcome.best_epoch,
        "model": {"name": version.name, "version": version.version, "id": str(version.id),
                  "active": version.is_active},
        "candidates": [candidate.as_dict() for candidate in outcome.candidates],
        "chosen": {"method": outcome.method.value, "reason": outcome.reason},
        "warnings": outcome.warnings,
        "exports": meta["exports"],
        "dataset": dataset_record,
        **outcome.details,
    }  # fmt: skip


METHOD_RUNNERS: dict[str, MethodRunner] = {
    WORKER_CHECK: _run_worker_check,
    **{method.value: _run_training for method in Method},
}


def _process_is_gone(worker_id: str | None) -> bool:
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
        if was_running and not (_process_is_gone(previous_worker) or _heartbeat_is_stale(job)):
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
            .where(_owned(job_id, worker_id))
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
            job_id=job_id, worker_id=worker_id, status=JobStatus.FAILED,
            error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
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
            if _process_is_gone(job.worker_id):
                job.status = JobStatus.QUEUED.value
                job.worker_id = None
                requeued.append(job.id)
        return requeued
