"""One training run on a worker: the job's data and settings in, the ML layer's training,
its curves and progress in SQL, the model saved and registered as the next version."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.db.base import utcnow
from app.db.models import Dataset, EpochMetric, TrainingJob
from app.db.session import session_scope
from app.ml.config import Method, Task
from app.schemas.results import (
    Candidate,
    Chosen,
    DatasetRef,
    JobResult,
    ModelRef,
    RunRuntime,
    Timings,
)
from app.schemas.training import StoredParameters
from app.services import exports, model_versions
from app.services.datasets import load_manifest, local_images
from app.services.storage import ObjectMirror, get_storage, owner_key
from app.services.training.ownership import (
    JobCancelledError,
    JobTakenOverError,
    allow_registration,
    owned,
)
from models_store import file_sha256

if TYPE_CHECKING:
    from app.ml.fitting import EpochRecord, TrainingHooks
    from app.ml.train import PretrainedSource, TrainingOutcome

logger = logging.getLogger(__name__)


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
            spec,
            url=weights_url(spec, mirror=settings.weights_download_url),
            timeout=settings.weights_download_timeout_seconds,
        )
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


class JobReporter:
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
            .where(owned(self.job_id, self.worker_id))
            .values(heartbeat_at=utcnow(), **values)
        )
        if updated.rowcount != 1:  # type: ignore[attr-defined]
            raise JobTakenOverError(f"job {self.job_id} is no longer running on {self.worker_id}")

    def on_epoch_end(self, record: EpochRecord) -> None:
        with session_scope() as session:
            self._report(
                session,
                progress=min(record.epoch / self.total_epochs, 0.99),
                progress_detail={
                    "stage": record.stage,
                    "epoch": record.epoch,
                    "epochs": self.total_epochs,
                },
            )
            session.add(
                EpochMetric(
                    job_id=self.job_id,
                    stage=record.stage,
                    epoch=record.epoch,
                    loss=record.loss,
                    accuracy=record.accuracy,
                    val_loss=record.val_loss,
                    val_accuracy=record.val_accuracy,
                    learning_rate=record.learning_rate,
                    seconds=record.seconds,
                )
            )

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


def _output_description(method: Method, task: Task, class_count: int) -> str:
    """What the saved model's output is, in words (meta.json)."""
    if task is Task.MULTILABEL:
        return "sigmoid per label (each label's probability; thresholds per label)"
    if method is Method.SCRATCH and class_count == 2:
        return "sigmoid (probability of classes[1])"
    return "softmax over classes"


def _write_answers_by_image(
    folder: Path, *, outcome: TrainingOutcome, manifest: dict[str, Any]
) -> None:
    """The evaluation image by image, a file of the version (GET /jobs/{id}/predictions)."""
    import numpy as np

    from app.ml.data import encode_labels, manifest_task, split_items
    from app.ml.evaluate import PREDICTIONS_FILE, answers_by_image
    from app.ml.multilabel import DEFAULT_THRESHOLD

    split = outcome.evaluation["split"] if outcome.evaluation else None
    answers = outcome.probabilities.get(split) if split else None
    if split is None or answers is None:
        return
    items = split_items(manifest, split)
    classes: list[str] = manifest["classes"]
    task = manifest_task(manifest)
    thresholds = outcome.thresholds
    if task is Task.MULTILABEL and thresholds is None:  # (no validation split to choose by)
        thresholds = np.full(len(classes), DEFAULT_THRESHOLD)
    rows = answers_by_image(
        answers,
        encode_labels(items, classes, task=task),
        classes,
        images=[item["sha256"] for item in items],
        thresholds=thresholds if task is Task.MULTILABEL else None,
    )
    document = {"split": split, "classes": classes, "images": rows}
    (folder / PREDICTIONS_FILE).write_text(json.dumps(document, separators=(",", ":")))


def run_training(job_id: uuid.UUID, worker_id: str) -> dict[str, Any]:
    from app.ml.config import PRETRAINED_METHODS
    from app.ml.data import ManifestSplits, manifest_task
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
        method, owner = job.method, job.owner
        parameters = StoredParameters.load(job.parameters, method=job.method)
        manifest = load_manifest(dataset.id)
        dataset_id = dataset.id
        fingerprint, dataset_name = dataset.fingerprint or "", dataset.name
        # Which images the model learned from: every version of a dataset stays trainable.
        dataset_record = {
            "id": str(dataset.id),
            "name": dataset_name,
            "version": dataset.version,
            "lineage_id": str(dataset.lineage_id),
            "fingerprint": fingerprint,
        }
    gpus = configure_devices(mixed_precision=settings.mixed_precision)
    # the dataset says the task: one class per image, or any number of labels
    config = dataclasses.replace(parameters.to_train_config(), task=manifest_task(manifest))
    reporter = JobReporter(job_id, worker_id, config.most_epochs)
    hooks = TrainingHooks(
        on_epoch_end=reporter.on_epoch_end,
        on_progress=reporter.on_progress,
        should_stop=reporter.should_stop,
    )
    splits = ManifestSplits(
        manifest,
        files=lambda items: local_images(dataset_id, items),
        image_size=config.image_size,
        max_pixels=settings.max_image_pixels,
        on_progress=reporter.on_progress,
    )
    pretrained = None
    if config.method in PRETRAINED_METHODS:
        pretrained = pretrained_source(
            config.base_model, owner=owner, fingerprint=fingerprint, hooks=hooks
        )
    started = time.perf_counter()
    try:
        outcome = train(config, splits=splits, hooks=hooks, pretrained=pretrained)
    except CancelledError as exc:
        raise JobCancelledError(str(exc)) from exc
    trained = time.perf_counter()
    thresholds = (
        None
        if outcome.thresholds is None
        else dict(zip(manifest["classes"], outcome.thresholds.tolist(), strict=True))
    )
    summary = {
        "method": outcome.method.value,
        "requested_method": method,
        "best_epoch": outcome.best_epoch,
        "test_accuracy": outcome.evaluation["accuracy"] if outcome.evaluation else None,
        "evaluated_on": outcome.evaluation["split"] if outcome.evaluation else None,
        "validation_accuracy": outcome.details.get("validation_accuracy"),
        **(
            {
                "test_mean_average_precision": outcome.evaluation["mean_average_precision"],
                "validation_mean_average_precision": outcome.details.get(
                    "validation_mean_average_precision"
                ),
                # what /predict applies: GET /models/{name}/versions/{v} shows them
                "thresholds": thresholds,
            }
            if outcome.evaluation and thresholds
            else {}
        ),
        "warnings": outcome.warnings,
        "dataset": dataset_record,
    }
    meta = {
        "job_id": str(job_id),
        "dataset": dataset_record,
        "method": outcome.method.value,
        "parameters": parameters.stored(),
        "classes": manifest["classes"],
        "input": {
            "pixels": "RGB 0..255, any size; the model resizes and preprocesses",
            "image_size": config.image_size,
        },
        "task": config.task.value,
        "output": _output_description(outcome.method, config.task, len(manifest["classes"])),
        **({"thresholds": thresholds} if thresholds else {}),
        "summary": summary,
        "gpus": gpus,
        **({"outliers": outcome.outliers.describe()} if outcome.outliers else {}),
    }
    with tempfile.TemporaryDirectory(prefix="model-", dir=settings.data_dir) as tmp:
        build = Path(tmp)
        reporter.on_progress({"stage": "saving"})
        _write_answers_by_image(build, outcome=outcome, manifest=manifest)
        meta["exports"] = write_model_files(
            build,
            model=outcome.model,
            classes=manifest["classes"],
            metadata=meta,
            onnx=settings.export_onnx,
            outliers=outcome.outliers,
            frozen_top=outcome.frozen_top,
        )
        reporter.on_progress({"stage": "registering"})
        version = model_versions.register_version(
            name=parameters.model_name,
            job_id=job_id,
            owner=owner,
            source_dir=build,
            metadata=meta,
            metrics_summary=summary,
            may_activate=outcome.beats_chance,
            still_valid=lambda session: allow_registration(
                session, job_id=job_id, worker_id=worker_id
            ),
            on_registered=lambda session, row: exports.request_after_training(session, version=row),
        )
    result = JobResult(
        method=outcome.method,
        evaluation=outcome.evaluation,
        best_epoch=outcome.best_epoch,
        model=ModelRef(
            name=version.name, version=version.version, id=version.id, active=version.is_active
        ),
        candidates=[
            Candidate.model_validate(candidate.as_dict()) for candidate in outcome.candidates
        ],
        chosen=Chosen(method=outcome.method, reason=outcome.reason),
        warnings=outcome.warnings,
        exports=meta["exports"],
        dataset=DatasetRef.model_validate(dataset_record),
        timings=Timings(
            total=round(trained - started, 3),
            features=outcome.details.get("feature_seconds"),
            saving=round(time.perf_counter() - trained, 3),
        ),
        runtime=RunRuntime(gpus=gpus, feature_extraction=outcome.details.get("feature_runtime")),
        **outcome.details,
    )
    return result.stored()
