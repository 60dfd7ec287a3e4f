"""An iteration's performance as Custom Vision reports it: per tag, precision and recall of
answering the tag where its probability reaches a threshold, and average precision; over the
tags, the same counted together, and the mean average precision; and image by image, each
held-out image's tags and the model's answer. Measured on the images the training held out
(the snapshot's test split, else its validation split) with the iteration's own model, once
per iteration and process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.kept import Kept
from app.db.customvision import CvImage, CvIteration, CvProject
from app.ml.data import item_labels
from app.ml.multilabel import average_precision
from app.schemas.customvision import (
    ImagePerformance,
    ImageTag,
    IterationPerformance,
    Prediction,
    TagPerformance,
)
from app.services import inference
from app.services.auth import Principal
from app.services.customvision import iterations
from app.services.customvision.errors import CustomVisionError
from app.services.customvision.images import image_wire
from app.services.customvision.projects import parse_id
from app.services.datasets import load_manifest
from app.services.inference import ImagePayload, MemoryBudget, ModelCache
from app.services.storage import get_storage

# Iterations whose held-out answers this process keeps (each: images x tags floats).
KEPT_ITERATIONS = 16


@dataclass(frozen=True)
class HeldOut:
    """The held-out images' answers: the sha256 of each image's file (the project image it
    came from), and probabilities and 0/1 truth, (images, classes) each."""

    classes: list[str]
    sources: list[str]
    probabilities: np.ndarray
    truth: np.ndarray


_kept: Kept[str, HeldOut] = Kept(KEPT_ITERATIONS)


def remembered(iteration: CvIteration) -> HeldOut | None:
    return _kept.get(str(iteration.id))


def remember(iteration: CvIteration, held_out: HeldOut) -> None:
    _kept.put(str(iteration.id), held_out)


def held_out_images(
    iteration: CvIteration,
) -> tuple[list[str], list[str], list[bytes], np.ndarray]:
    """The classes, the held-out images' sha256 and files, and their 0/1 truth rows (a
    negative example's row is all 0)."""
    assert iteration.dataset_id is not None
    manifest = load_manifest(iteration.dataset_id)
    classes: list[str] = manifest["classes"]
    items = [item for item in manifest["images"] if item["split"] == "test"]
    if not items:
        items = [item for item in manifest["images"] if item["split"] == "validation"]
    store = get_storage().datasets
    files = [store.get_bytes(f"{iteration.dataset_id}/{item['file']}") for item in items]
    truth = np.zeros((len(items), len(classes)), dtype=np.float64)
    index = {name: i for i, name in enumerate(classes)}
    for row, item in enumerate(items):
        for label in item_labels(item):
            truth[row, index[label]] = 1.0
    return classes, [item["sha256"] for item in items], files, truth


def trained_version(session: Session, iteration: CvIteration) -> int:
    """The model version of a trained iteration (BadRequestIterationIsNotTrained if none)."""
    version = iterations.model_version(session, iteration)
    if version is None or iteration.dataset_id is None:
        raise CustomVisionError(
            "BadRequestIterationIsNotTrained", f"iteration {iteration.id} is not trained"
        )
    return version


async def held_out(
    *,
    iteration: CvIteration,
    version: int,
    cache: ModelCache,
    budget: MemoryBudget,
    principal: Principal,
) -> HeldOut:
    """The iteration's answers on its held-out images: remembered, or computed now (in
    chunks of at most `max_predict_images`, as a prediction request is bounded)."""
    found = remembered(iteration)
    if found is not None:
        return found
    classes, sources, files, truth = await run_in_threadpool(held_out_images, iteration)
    chunk = get_settings().max_predict_images
    answers = [np.zeros((0, len(classes)))]
    for start in range(0, len(files), chunk):
        result = await inference.predict_images(
            cache=cache,
            budget=budget,
            principal=principal,
            images=[ImagePayload(data=data) for data in files[start : start + chunk]],
            model=iterations.model_name_of(str(iteration.project_id)),
            version=version,
            detect_unknown=False,
        )
        answers.append(result.probabilities)
    computed = HeldOut(classes, sources, np.concatenate(answers), truth)
    remember(iteration, computed)
    return computed


def performance(
    held_out: HeldOut, *, threshold: float, tag_ids: dict[str, str]
) -> IterationPerformance:
    """Custom Vision's IterationPerformance at `threshold` (standard deviations: 0, one
    held-out split gives no spread)."""
    answered = held_out.probabilities >= threshold
    truth = held_out.truth > 0
    per_tag = []
    precisions, recalls, aps = [], [], []
    for j, name in enumerate(held_out.classes):
        tp = float(np.sum(answered[:, j] & truth[:, j]))
        fp = float(np.sum(answered[:, j] & ~truth[:, j]))
        fn = float(np.sum(~answered[:, j] & truth[:, j]))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        ap = average_precision(held_out.probabilities[:, j], truth[:, j]) or 0.0
        precisions.append(precision)
        recalls.append(recall)
        aps.append(ap)
        per_tag.append(
            TagPerformance(
                id=tag_ids.get(name, ""),
                name=name,
                precision=precision,
                precision_std_deviation=0.0,
                recall=recall,
                recall_std_deviation=0.0,
                average_precision=ap,
            )
        )
    tp = float(np.sum(answered & truth))
    fp = float(np.sum(answered & ~truth))
    fn = float(np.sum(~answered & truth))
    return IterationPerformance(
        per_tag_performance=per_tag,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        precision_std_deviation=0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        recall_std_deviation=0.0,
        average_precision=float(np.mean(aps)) if aps else 0.0,
    )


def _held_out_project_images(
    session: Session,
    *,
    project: CvProject,
    held_out: HeldOut,
    tag_names: Sequence[str],
    newest_first: bool,
) -> list[tuple[CvImage, int]]:
    """The project's images among the held-out ones (an image deleted since is left out),
    with their row; with `tag_names`, only those that had one of them."""
    rows = {sha: row for row, sha in enumerate(held_out.sources)}
    if tag_names:
        wanted = [held_out.classes.index(n) for n in tag_names if n in held_out.classes]
        had = {int(row) for row in np.flatnonzero((held_out.truth[:, wanted] > 0).any(axis=1))}
        rows = {sha: row for sha, row in rows.items() if wanted and row in had}
    order = CvImage.created_at.desc() if newest_first else CvImage.created_at.asc()
    found = session.scalars(
        select(CvImage)
        .where(CvImage.project_id == project.id, CvImage.sha256.in_(list(rows)))
        .order_by(order, CvImage.id)
    )
    return [(image, rows[image.sha256]) for image in found]


def _tag_names(
    session: Session, *, project: CvProject, iteration: CvIteration, tag_ids: Sequence[str]
) -> list[str]:
    parsed = {str(parse_id(t, code="BadRequestInvalidIds", what="tag id")) for t in tag_ids}
    tags = iterations.trained_tags(session, project=project, iteration=iteration)
    return [t.name for t in tags if t.id in parsed]


def image_performances(
    session: Session,
    *,
    project: CvProject,
    iteration: CvIteration,
    held_out: HeldOut,
    tag_ids: Sequence[str],
    newest_first: bool,
    take: int,
    skip: int,
    base_url: str,
) -> list[ImagePerformance]:
    """A page of the held-out images (with any of `tag_ids`, if given): each with the tags
    it was trained with and the iteration's answer, most probable first."""
    names = _tag_names(session, project=project, iteration=iteration, tag_ids=tag_ids)
    if tag_ids and not names:
        return []
    found = _held_out_project_images(
        session, project=project, held_out=held_out, tag_names=names, newest_first=newest_first
    )
    ids = {
        t.name: t.id for t in iterations.trained_tags(session, project=project, iteration=iteration)
    }
    pages = []
    for image, row in found[skip : skip + take]:
        wire = image_wire(session, image, base_url=base_url, tags=[])
        truth = [held_out.classes[j] for j in np.flatnonzero(held_out.truth[row])]
        answer = [
            Prediction(probability=float(p), tag_id=ids.get(name, ""), tag_name=name)
            for name, p in zip(held_out.classes, held_out.probabilities[row], strict=True)
        ]
        answer.sort(key=lambda p: p.probability, reverse=True)
        pages.append(
            ImagePerformance(
                id=wire.id,
                created=wire.created,
                width=wire.width,
                height=wire.height,
                image_uri=wire.original_image_uri,
                thumbnail_uri=wire.thumbnail_uri,
                tags=[
                    ImageTag(tag_id=ids.get(name, ""), tag_name=name, created=image.created_at)
                    for name in truth
                ],
                predictions=answer,
            )
        )
    return pages


def image_performance_count(
    session: Session,
    *,
    project: CvProject,
    iteration: CvIteration,
    held_out: HeldOut,
    tag_ids: Sequence[str],
) -> int:
    names = _tag_names(session, project=project, iteration=iteration, tag_ids=tag_ids)
    if tag_ids and not names:
        return 0
    found = _held_out_project_images(
        session, project=project, held_out=held_out, tag_names=names, newest_first=True
    )
    return len(found)
