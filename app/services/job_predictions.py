"""A job's evaluation image by image: the answers of the version it registered on the split
it was evaluated on (a file the worker writes beside the model), filtered and paged."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import BadRequestError, ConflictError, NotFoundError
from app.core.kept import Kept
from app.db.models import WORKER_CHECK, JobStatus, ModelVersion, TrainingJob
from app.ml.evaluate import PREDICTIONS_FILE
from app.schemas.jobs import ImageAnswer, JobPredictions
from app.services import model_versions
from app.services.model_versions import VersionRef

# Parsed answer files this process keeps (a few hundred KB each at most sizes).
KEPT_FILES = 8


@dataclass(frozen=True)
class AnswerFilter:
    """Which images to list: only the wrong ones, those of a true label, those answered a
    label (both: one cell of the confusion matrix)."""

    mistakes: bool = False
    true_label: str | None = None
    predicted_label: str | None = None

    def keeps(self, row: dict[str, Any]) -> bool:
        return (
            (not self.mistakes or not row["correct"])
            and (self.true_label is None or self.true_label in row["true_labels"])
            and (self.predicted_label is None or self.predicted_label in row["predicted_labels"])
        )


_kept: Kept[uuid.UUID, dict[str, Any]] = Kept(KEPT_FILES)


def _answers(ref: VersionRef) -> dict[str, Any]:
    if (found := _kept.get(ref.id)) is not None:
        return found
    path = model_versions.served_folder(ref) / PREDICTIONS_FILE
    if not path.is_file():
        raise NotFoundError(
            f"{ref.name} v{ref.version} was trained before answers were kept image by image: "
            "train again to have them"
        )
    document: dict[str, Any] = json.loads(path.read_text())
    _kept.put(ref.id, document)
    return document


def _registered_version(session: Session, job: TrainingJob) -> ModelVersion:
    if job.method == WORKER_CHECK:
        raise BadRequestError(f"job {job.id} is a worker check: it trained no model")
    if job.status != JobStatus.SUCCEEDED or not job.result or not job.result.get("model"):
        raise ConflictError(f"job {job.id} has no evaluation: it is {job.status}")
    row = session.get(ModelVersion, uuid.UUID(job.result["model"]["id"]))
    if row is None:
        model = job.result["model"]
        raise NotFoundError(
            f"{model['name']} v{model['version']}, the model job {job.id} trained, was deleted"
        )
    return row


def list_answers(
    session: Session, *, job: TrainingJob, filters: AnswerFilter, offset: int, limit: int
) -> JobPredictions:
    """The page of the job's evaluated images that `filters` keeps, in the split's order."""
    row = _registered_version(session, job)
    assert job.result is not None  # (a succeeded job's, checked above)
    document = _answers(VersionRef.of(row))
    classes: list[str] = document["classes"]
    for label in (filters.true_label, filters.predicted_label):
        if label is not None and label not in classes:
            raise BadRequestError(
                f"{label!r} is not a class of the model: one of {', '.join(classes[:50])}"
            )
    # (the version trained on: a result of a release that kept answers names it)
    dataset_id = uuid.UUID(job.result["dataset"]["id"])
    rows: list[dict[str, Any]] = document["images"]
    kept = [r for r in rows if filters.keeps(r)]
    return JobPredictions(
        job_id=job.id,
        dataset_id=dataset_id,
        split=document["split"],
        classes=classes,
        evaluated=len(rows),
        correct=sum(1 for r in rows if r["correct"]),
        matching=len(kept),
        offset=offset,
        limit=limit,
        items=[
            ImageAnswer(
                image_id=r["image"],
                image_url=f"/datasets/{dataset_id}/images/{r['image']}/thumbnail",
                true_labels=r["true_labels"],
                predicted_labels=r["predicted_labels"],
                probabilities=dict(zip(classes, r["probabilities"], strict=True)),
                correct=r["correct"],
            )
            for r in kept[offset : offset + limit]
        ],
    )
