"""Suggestions and label issues of a dataset version, ranked from its analysis in the API
(NumPy only); while the analysis is being computed, what to tell the client (Pending)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import AnalysisFailedError, BadRequestError
from app.core.kept import Kept
from app.db.models import Dataset
from app.ml import labeling
from app.ml.config import Task
from app.schemas.labeling import (
    ClassProbability,
    LabelIssue,
    LabelIssueList,
    Suggestion,
    SuggestionList,
)
from app.services import inference, model_versions
from app.services.auth import Principal
from app.services.datasets import read_image
from app.services.inference import ImagePayload, MemoryBudget, ModelCache
from app.services.labeling.analyses import (
    RETRY_AFTER_SECONDS,
    RETRY_FAILED_AFTER_SECONDS,
    AnalysisArrays,
    AnalysisStatus,
    load_arrays,
    request_analysis,
)
from app.services.previews import image_entry

# Classes shown with a suggestion.
SHOWN_CLASSES = 3
# (model version, dataset version) pairs whose answers on the unlabeled images are kept.
KEPT_MODEL_ANSWERS = 8
_answers: Kept[tuple[uuid.UUID, uuid.UUID], np.ndarray] = Kept(KEPT_MODEL_ANSWERS)


@dataclass(frozen=True)
class Pending:
    """The analysis is not ready: its status, and when to ask again."""

    status: str
    retry_after_seconds: int
    detail: str


def ready(session: Session, *, dataset: Dataset) -> AnalysisArrays | Pending:
    """The version's analysis, loaded, or what to tell the client while it is computed."""
    analysis = request_analysis(session, dataset=dataset)
    if analysis.status == AnalysisStatus.FAILED:
        raise AnalysisFailedError(
            f"the analysis of version {dataset.version} failed: {analysis.error}; asking again "
            f"from {RETRY_FAILED_AFTER_SECONDS:.0f} s after the failure tries again"
        )
    if analysis.status != AnalysisStatus.READY:
        return Pending(
            status=str(analysis.status),
            retry_after_seconds=RETRY_AFTER_SECONDS,
            detail="a worker is computing the features of the version's images: ask again in "
            f"{RETRY_AFTER_SECONDS} s",
        )
    return load_arrays(analysis)


def _thumbnail(dataset: Dataset, image_id: str) -> str:
    return f"/datasets/{dataset.id}/images/{image_id}/thumbnail"


def _likeliest(classes: list[str], row: np.ndarray) -> list[ClassProbability]:
    order = np.argsort(-row, kind="stable")[:SHOWN_CLASSES]
    return [ClassProbability(label=classes[i], probability=round(float(row[i]), 4)) for i in order]


async def model_answers(
    session: Session,
    *,
    dataset: Dataset,
    arrays: AnalysisArrays,
    model: str,
    version: int | None,
    cache: ModelCache,
    budget: MemoryBudget,
    principal: Principal,
) -> tuple[np.ndarray, str]:
    """A trained model's class probabilities of the version's unlabeled images (in chunks of
    at most `max_predict_images`, as a prediction request is bounded), and its name and
    version; remembered per model version and dataset version (both never change).
    BadRequestError where the model's classes are not the dataset's."""
    ref = await run_in_threadpool(
        lambda: model_versions.resolve_version(
            session, name=model, version=version, principal=principal
        )
    )
    answered_by = f"{ref.name} v{ref.version}"
    key = (ref.id, dataset.id)
    if (kept := _answers.get(key)) is not None:
        return kept, answered_by
    images = list(arrays.unlabeled_ids)
    chunk = get_settings().max_predict_images
    found: list[np.ndarray] = [np.zeros((0, len(dataset.class_names)))]
    for start in range(0, len(images), chunk):
        files = await run_in_threadpool(_unlabeled_files, dataset, images[start : start + chunk])
        result = await inference.predict_images(
            cache=cache,
            budget=budget,
            principal=principal,
            images=[ImagePayload(data=data) for data in files],
            model=ref.name,
            version=ref.version,
            detect_unknown=False,
        )
        if result.classes != list(dataset.class_names):
            raise BadRequestError(
                f"{answered_by}'s classes ({', '.join(result.classes[:20])}) are not the "
                f"dataset's ({', '.join(dataset.class_names[:20])})"
            )
        found.append(result.probabilities)
    answers = np.concatenate(found)
    _answers.put(key, answers)
    return answers, answered_by


def _unlabeled_files(dataset: Dataset, image_ids: list[str]) -> list[bytes]:
    return [read_image(dataset, image_entry(dataset, image_id)) for image_id in image_ids]


def suggestions(
    dataset: Dataset,
    arrays: AnalysisArrays,
    *,
    count: int,
    seed: int = 0,
    probabilities: np.ndarray | None = None,
    answered_by: str | None = None,
) -> SuggestionList:
    """The `count` unlabeled images most worth labeling next (app.ml.labeling.suggest), with
    the unlabeled images' answers of a trained model (`probabilities`, by `answered_by`) or
    of the analysis' softmax regression."""
    classes: list[str] = dataset.class_names
    task = Task(dataset.task)
    if task is Task.MULTILABEL:
        # (no single class per image to be unsure between: typical and diverse images only)
        per_label = arrays.labels.sum(axis=0) if len(arrays.labels) else np.zeros(len(classes))
        smallest = int(per_label.min()) if len(classes) else 0
        strategy = labeling.Strategy.TYPICAL
        class_indices = np.zeros(len(arrays.labels), dtype=np.int64)
    else:
        counts = np.bincount(arrays.labels, minlength=len(classes))
        smallest = int(counts.min())
        strategy = (
            labeling.Strategy.TYPICAL
            if labeling.cold_start(arrays.labels, len(classes))
            else labeling.Strategy.UNCERTAIN
        )
        class_indices = arrays.labels
    if probabilities is None:
        probabilities = arrays.unlabeled_probabilities
        answered_by = "a softmax regression on the labeled images' features"
    picks = labeling.suggest(
        arrays.labeled_features,
        class_indices,
        arrays.unlabeled_features,
        class_count=len(classes),
        count=count,
        seed=seed,
        probabilities=probabilities,
        strategy=strategy,
    )
    items = []
    for pick in picks:
        row = probabilities[pick.index] if probabilities is not None else None
        predicted = _likeliest(classes, row) if row is not None else []
        items.append(
            Suggestion(
                image_id=arrays.unlabeled_ids[pick.index],
                image_url=_thumbnail(dataset, arrays.unlabeled_ids[pick.index]),
                predicted=predicted,
                score=round(pick.score, 6),
                reason=_reason(pick, predicted),
            )
        )
    return SuggestionList(
        dataset_id=dataset.id,
        version=dataset.version,
        strategy=strategy.value,
        why=_why(strategy, smallest=smallest, task=task),
        answers_from=answered_by if probabilities is not None else None,
        labeled=len(arrays.labeled_ids),
        smallest_class=smallest,
        unlabeled=len(arrays.unlabeled_ids),
        items=items,
    )


def _why(strategy: labeling.Strategy, *, smallest: int, task: Task) -> str:
    if task is Task.MULTILABEL:
        return (
            "a multi-label dataset: typical images of groups of similar images that no labeled "
            "image is in, one per group"
        )
    if strategy is labeling.Strategy.TYPICAL:
        return (
            f"the smallest class has {smallest} labeled images (fewer than "
            f"{labeling.COLD_START_PER_CLASS}): with so few, typical images of groups no labeled "
            "image is in teach a model more than the ones it is unsure of"
        )
    return (
        f"every class has at least {labeling.COLD_START_PER_CLASS} labeled images: the images "
        "a model on them is least sure of, one from each group of similar ones"
    )


def _reason(pick: labeling.Suggestion, predicted: list[ClassProbability]) -> str:
    if pick.strategy is labeling.Strategy.TYPICAL:
        return "typical of a group of similar images, none of them labeled yet"
    if len(predicted) >= 2:
        first, second = predicted[0], predicted[1]
        return (
            f"unsure: {first.label} {first.probability:.0%} against {second.label} "
            f"{second.probability:.0%}"
        )
    return "the model is unsure of it"


def label_issues(
    session: Session, *, dataset: Dataset, offset: int, limit: int
) -> LabelIssueList | Pending:
    """The labeled images whose given label is likely wrong (app.ml.labeling.label_issues on
    the analysis' out-of-fold answers), most likely first."""
    if Task(dataset.task) is Task.MULTILABEL:
        raise BadRequestError(
            "label issues are found in multiclass datasets only: a multi-label image's labels "
            "are not one answer to check"
        )
    arrays = ready(session, dataset=dataset)
    if isinstance(arrays, Pending):
        return arrays
    assert arrays.out_of_fold is not None  # (a multiclass analysis has them)
    classes: list[str] = dataset.class_names
    found = labeling.label_issues(arrays.out_of_fold, arrays.labels)
    summary = arrays.summary
    return LabelIssueList(
        dataset_id=dataset.id,
        version=dataset.version,
        method=(
            f"confident learning on {summary.get('folds')}-fold out-of-fold probabilities of a "
            f"softmax regression (L2 {summary.get('l2')}) on {summary.get('base_model')} "
            f"features at {summary.get('image_size')} px"
        ),
        checked=len(arrays.labeled_ids),
        found=len(found),
        out_of_fold_accuracy=float(summary.get("out_of_fold_accuracy", 0.0)),
        offset=offset,
        limit=limit,
        items=[
            LabelIssue(
                image_id=arrays.labeled_ids[issue.index],
                image_url=_thumbnail(dataset, arrays.labeled_ids[issue.index]),
                split=arrays.labeled_splits[issue.index],
                given_label=classes[issue.given],
                suggested_label=classes[issue.suggested],
                given_probability=round(issue.self_confidence, 4),
                suggested_probability=round(
                    float(arrays.out_of_fold[issue.index, issue.suggested]), 4
                ),
            )
            for issue in found[offset : offset + limit]
        ],
    )
