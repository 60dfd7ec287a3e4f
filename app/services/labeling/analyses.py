"""A dataset version's analysis: the features and answers labeling help ranks with, asked for
once per version (a row, then a task sent after the commit), computed by a worker, stored
beside the version's images and read back by the API (NumPy only there).

What a worker computes: every labeled and unlabeled image's pooled features from the
default request's frozen base (its native size, the image as training decodes it), each
labeled image's out-of-fold class probabilities (k-fold softmax regression, its L2 strength
chosen by out-of-fold log loss) and each unlabeled image's probabilities from the same model
fitted on every labeled image."""

from __future__ import annotations

import functools
import io
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.kept import Kept
from app.core.queue import ANALYSE_DATASET, send_task
from app.db.base import utcnow
from app.db.claims import claim_queued, finish_running
from app.db.locks import dataset_lineage_key, lock_key
from app.db.models import Dataset, DatasetAnalysis, ExportStatus
from app.db.session import after_commit, session_scope
from app.ml.config import Task
from app.ml.data import item_labels
from app.services.datasets import load_manifest, local_images
from app.services.storage import get_storage

logger = logging.getLogger(__name__)

# The status names are an export's: queued, running, ready, failed.
AnalysisStatus = ExportStatus
REQUEUE_AFTER_SECONDS = 60.0
STALE_SECONDS = 1800.0
# A failed analysis is tried again when asked for this long after it failed (before, the
# request answers with its error: a failure that repeats is not sent again every poll).
RETRY_FAILED_AFTER_SECONDS = 300.0
RETRY_AFTER_SECONDS = 5
# Images decoded and run through the base at once (bounds the worker's memory).
BATCH = 64
# Analyses whose arrays this API process keeps loaded (features: float32, images x 1280:
# 26 MB for 5000 images).
KEPT = 2


def _send(analysis_id: uuid.UUID) -> None:
    send_task(ANALYSE_DATASET, args=[str(analysis_id)], queue=get_settings().default_queue)


def _find(session: Session, dataset: Dataset) -> DatasetAnalysis | None:
    return session.scalar(
        select(DatasetAnalysis)
        .where(DatasetAnalysis.dataset_id == dataset.id)
        .execution_options(populate_existing=True)
    )


def _needs_sending(analysis: DatasetAnalysis | None, *, now: Any) -> bool:
    if analysis is None:
        return True
    if analysis.status == AnalysisStatus.FAILED:
        failed_at = analysis.finished_at or analysis.requested_at
        return bool(now - failed_at > timedelta(seconds=RETRY_FAILED_AFTER_SECONDS))
    if analysis.status == AnalysisStatus.QUEUED:
        return bool(now - analysis.requested_at > timedelta(seconds=REQUEUE_AFTER_SECONDS))
    if analysis.status == AnalysisStatus.RUNNING and analysis.started_at is not None:
        return bool(now - analysis.started_at > timedelta(seconds=STALE_SECONDS))
    return False


def request_analysis(session: Session, *, dataset: Dataset) -> DatasetAnalysis:
    """The version's analysis, asked for once: a new one is queued and its task sent after
    the commit (under the lineage's lock: concurrent first requests make one); one that
    waits too long, or failed over RETRY_FAILED_AFTER_SECONDS ago, is sent again."""
    analysis = _find(session, dataset)
    if not _needs_sending(analysis, now=utcnow()):
        assert analysis is not None
        return analysis
    lock_key(session, dataset_lineage_key(dataset.lineage_id))
    analysis = _find(session, dataset)
    if not _needs_sending(analysis, now=utcnow()):
        assert analysis is not None
        return analysis
    if analysis is None:
        analysis = DatasetAnalysis(dataset_id=dataset.id)
        session.add(analysis)
    else:
        logger.warning("analysis %s of dataset %s: sending its task again", analysis.id, dataset.id)
        analysis.status, analysis.error, analysis.worker_id = (
            AnalysisStatus.QUEUED.value,
            None,
            None,
        )
    analysis.requested_at = utcnow()
    session.flush()
    after_commit(session, functools.partial(_send, analysis.id))
    return analysis


# --- In a worker


def run_analysis(*, analysis_id: uuid.UUID, worker_id: str) -> None:
    """Compute a queued analysis (in a worker), store its arrays and mark it ready; a failure
    is recorded on the row with its reason. Safe to call twice."""
    claimed = _claim(analysis_id, worker_id)
    if claimed is None:
        logger.info("analysis %s is not queued; nothing to do", analysis_id)
        return
    started = time.perf_counter()
    try:
        arrays, summary = _compute(claimed)
        # One file per attempt: a run taken for dead that ends late removes its own file, never
        # the one of the run that replaced it.
        key = f"{claimed.dataset_id}/analysis/{analysis_id}-{uuid.uuid4().hex}.npz"
        with tempfile.TemporaryDirectory(prefix="analysis-", dir=get_settings().data_dir) as tmp:
            path = Path(tmp) / "analysis.npz"
            np.savez(path, **arrays)  # type: ignore[arg-type]
            get_storage().datasets.put_file(key, path)
    except Exception as exc:
        logger.exception("analysis %s of dataset %s failed", analysis_id, claimed.dataset_id)
        _finish(
            analysis_id,
            worker_id,
            status=AnalysisStatus.FAILED.value,
            error=f"{type(exc).__name__}: {exc}",
        )
        return
    summary["seconds"] = round(time.perf_counter() - started, 2)
    if not _finish(
        analysis_id, worker_id, status=AnalysisStatus.READY.value, key=key, summary=summary
    ):
        get_storage().datasets.delete(key)  # taken over, or its dataset deleted meanwhile


@dataclass(frozen=True)
class _Claimed:
    dataset_id: uuid.UUID
    owner: str | None
    fingerprint: str
    task: Task


def _claim(analysis_id: uuid.UUID, worker_id: str) -> _Claimed | None:
    with session_scope() as session:
        if not claim_queued(session, DatasetAnalysis, analysis_id, worker_id):
            return None
        analysis = session.get(DatasetAnalysis, analysis_id)
        assert analysis is not None
        dataset = session.get(Dataset, analysis.dataset_id)
        assert dataset is not None  # (the row goes with its dataset's)
        return _Claimed(dataset.id, dataset.owner, dataset.fingerprint or "", Task(dataset.task))


def _finish(analysis_id: uuid.UUID, worker_id: str, **values: Any) -> bool:
    return finish_running(DatasetAnalysis, analysis_id, worker_id, **values)


def _compute(claimed: _Claimed) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from app.ml import labeling
    from app.ml.data import encode_labels

    settings = get_settings()
    manifest = load_manifest(claimed.dataset_id)
    classes: list[str] = manifest["classes"]
    # the images of the classes (a multiclass dataset's negatives are of none: left out)
    labeled = [
        item for item in manifest["images"] if claimed.task is Task.MULTILABEL or item_labels(item)
    ]
    waiting: list[dict[str, Any]] = manifest.get("unlabeled", [])
    base_name = settings.labeling_base_model
    features, image_size = _features(claimed, [*labeled, *waiting], base_name=base_name)
    labeled_features, waiting_features = features[: len(labeled)], features[len(labeled) :]
    arrays: dict[str, np.ndarray] = {
        "labeled_ids": np.array([item["sha256"] for item in labeled]),
        "labeled_splits": np.array([str(item["split"]) for item in labeled]),
        "labeled_features": labeled_features.astype(np.float16),
        "unlabeled_ids": np.array([item["sha256"] for item in waiting], dtype="<U64"),
        "unlabeled_features": waiting_features.astype(np.float16),
    }
    summary: dict[str, Any] = {
        "base_model": base_name,
        "image_size": image_size,
        "labeled": len(labeled),
        "unlabeled": len(waiting),
        "classes": classes,
        "task": claimed.task.value,
    }
    if claimed.task is Task.MULTICLASS:
        labels = encode_labels(labeled, classes, task=Task.MULTICLASS)
        arrays["labels"] = labels
        out_of_fold = labeling.out_of_fold_probabilities(
            labeled_features, labels, class_count=len(classes)
        )
        arrays["out_of_fold"] = out_of_fold.probabilities.astype(np.float32)
        model = labeling.SoftmaxRegression.fit(
            labeled_features, labels, class_count=len(classes), l2=out_of_fold.l2
        )
        arrays["unlabeled_probabilities"] = (
            model.probabilities(waiting_features).astype(np.float32)
            if len(waiting)
            else np.zeros((0, len(classes)), dtype=np.float32)
        )
        summary.update(
            l2=out_of_fold.l2,
            folds=out_of_fold.folds,
            out_of_fold_accuracy=round(
                float((out_of_fold.probabilities.argmax(axis=1) == labels).mean()), 4
            ),
        )
    else:
        arrays["labels"] = encode_labels(labeled, classes, task=Task.MULTILABEL)
    return arrays, summary


def _features(
    claimed: _Claimed, items: list[dict[str, Any]], *, base_name: str
) -> tuple[np.ndarray, int]:
    """Pooled features of every item from the frozen base, in batches of BATCH images."""
    import keras

    from app.ml import bases, builders
    from app.ml.data import resize_pixels
    from app.ml.fitting import TrainingHooks
    from app.ml.images import decode_image, image_to_array
    from app.services.training.run import pretrained_source

    settings = get_settings()
    spec = bases.BASES[bases.BaseName(base_name)]
    image_size = settings.labeling_image_size or spec.native_size
    source = pretrained_source(
        base_name, owner=claimed.owner, fingerprint=claimed.fingerprint, hooks=TrainingHooks()
    )
    base = builders.frozen_base(spec, image_size=image_size, weights=source.weights_path)
    extractor = builders.feature_extractor(base, spec, image_size=image_size, with_top_inputs=False)
    folder = local_images(claimed.dataset_id, items)
    chunks = []
    for start in range(0, len(items), BATCH):
        pixels = np.stack(
            [
                resize_pixels(
                    image_to_array(
                        decode_image(
                            (folder / item["file"]).read_bytes(),
                            max_pixels=settings.max_image_pixels,
                            target_size=image_size,
                        ).image
                    ),
                    image_size=image_size,
                )
                for item in items[start : start + BATCH]
            ]
        )
        chunks.append(np.asarray(extractor.predict(pixels, batch_size=32, verbose=0)))
    keras.backend.clear_session(free_memory=False)
    dimensions = int(extractor.output_shape[-1])
    features = np.concatenate(chunks) if chunks else np.zeros((0, dimensions), np.float32)
    return features.astype(np.float32), image_size


# --- In the API


@dataclass(frozen=True)
class AnalysisArrays:
    """A ready analysis, loaded (features as float32)."""

    summary: dict[str, Any]
    labeled_ids: list[str]
    labeled_splits: list[str]
    labeled_features: np.ndarray
    labels: np.ndarray
    out_of_fold: np.ndarray | None
    unlabeled_ids: list[str]
    unlabeled_features: np.ndarray
    unlabeled_probabilities: np.ndarray | None


_kept: Kept[uuid.UUID, AnalysisArrays] = Kept(KEPT)


def load_arrays(analysis: DatasetAnalysis) -> AnalysisArrays:
    assert analysis.status == AnalysisStatus.READY and analysis.key is not None
    if (found := _kept.get(analysis.id)) is not None:
        return found
    data = get_storage().datasets.get_bytes(analysis.key)
    with np.load(io.BytesIO(data)) as stored:
        arrays = AnalysisArrays(
            summary=dict(analysis.summary or {}),
            labeled_ids=stored["labeled_ids"].tolist(),
            labeled_splits=stored["labeled_splits"].tolist(),
            labeled_features=stored["labeled_features"].astype(np.float32),
            labels=stored["labels"],
            out_of_fold=stored["out_of_fold"] if "out_of_fold" in stored.files else None,
            unlabeled_ids=stored["unlabeled_ids"].tolist(),
            unlabeled_features=stored["unlabeled_features"].astype(np.float32),
            unlabeled_probabilities=stored["unlabeled_probabilities"]
            if "unlabeled_probabilities" in stored.files
            else None,
        )
    _kept.put(analysis.id, arrays)
    return arrays
