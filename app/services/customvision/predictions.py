"""Stored predictions: a classify call that stores (the Prediction API's default) keeps the
image and its answer in the review queue (this service's store of answers to look at again),
under the project's model; query_predictions reads them, create_images_from_predictions
makes them images of the project, delete_prediction removes them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.db.customvision import CvProject
from app.db.locks import lock_key
from app.db.models import ReviewItem
from app.schemas.customvision import (
    Prediction,
    PredictionQueryResult,
    PredictionQueryToken,
    StoredImagePrediction,
)
from app.services.auth import Principal
from app.services.customvision import iterations, projects
from app.services.customvision.errors import CustomVisionError, not_found
from app.services.customvision.projects import parse_id
from app.services.inference import ImagePayload
from app.services.review import capture, queue
from app.services.review.images import queue_lock, read_image

MAX_QUERY_RESULTS = 256


def store(
    *,
    principal: Principal,
    project_id: str,
    version: int,
    classes: Sequence[str],
    probabilities: np.ndarray,
    image: ImagePayload,
) -> None:
    """Keep a classified image and its answer where query_predictions finds it."""
    capture.keep_answers(
        principal=principal,
        model_name=iterations.model_name_of(project_id),
        model_version=version,
        classes=classes,
        answers=[(image, probabilities)],
    )


def _items(project: CvProject, principal: Principal) -> Select[tuple[ReviewItem]]:
    return select(ReviewItem).where(
        ReviewItem.owner == principal.owner,
        ReviewItem.model_name == iterations.model_name(project),
    )


def query(
    session: Session,
    *,
    project: CvProject,
    principal: Principal,
    token: PredictionQueryToken,
    base_url: str,
) -> PredictionQueryResult:
    """A page of the project's stored predictions, newest (or oldest) first, filtered by
    iteration, time and each tag's probability range; `continuation` goes on from a page."""
    if not 1 <= token.max_count <= MAX_QUERY_RESULTS:
        raise CustomVisionError(
            "BadRequestPredictionInvalidQueryParameters",
            f"maxCount is 1 to {MAX_QUERY_RESULTS}",
        )
    offset = 0
    if token.continuation:
        if not token.continuation.isdigit():
            raise CustomVisionError(
                "BadRequestPredictionInvalidQueryParameters", "a continuation this query gave"
            )
        offset = int(token.continuation)
    rows = _items(project, principal)
    versions = {
        iterations.model_version(session, i): i
        for i in iterations.list_iterations(session, project=project)
    }
    if token.iteration_id:
        asked = iterations.get_iteration(session, project=project, iteration_id=token.iteration_id)
        rows = rows.where(ReviewItem.model_version == iterations.model_version(session, asked))
    if token.start_time is not None:
        rows = rows.where(ReviewItem.created_at >= token.start_time)
    if token.end_time is not None:
        rows = rows.where(ReviewItem.created_at <= token.end_time)
    order = (
        ReviewItem.created_at.asc() if token.order_by == "Oldest" else ReviewItem.created_at.desc()
    )
    tags = {str(t.id): t for t in projects.list_tags(session, project=project)}
    ranges = []
    for wanted in token.tags or []:
        tag = tags.get(str(parse_id(wanted.id, code="BadRequestInvalidIds", what="tag id")))
        if tag is None:
            raise not_found("NotFoundTag", f"no tag {wanted.id}")
        ranges.append((tag.name, wanted.min_threshold, wanted.max_threshold))
    found = []
    for item in session.scalars(rows.order_by(order, ReviewItem.id)):
        if all(low <= item.scores.get(name, 0.0) <= high for name, low, high in ranges):
            found.append(item)
    page = found[offset : offset + token.max_count]
    by_name = {t.name: t for t in tags.values()}
    results = []
    for item in page:
        iteration = versions.get(item.model_version)
        uri = (
            f"{base_url.rstrip('/')}/customvision/v3.3/training/projects/{project.id}"
            f"/predictions/{item.id}/image"
        )
        predictions = sorted(
            (
                Prediction(probability=p, tag_id=str(by_name[name].id), tag_name=name)
                for name, p in item.scores.items()
                if name in by_name
            ),
            key=lambda p: p.probability,
            reverse=True,
        )
        results.append(
            StoredImagePrediction(
                resized_image_uri=uri,
                thumbnail_uri=uri,
                original_image_uri=uri,
                domain=str(project.domain_id),
                id=str(item.id),
                project=str(project.id),
                iteration="" if iteration is None else str(iteration.id),
                created=item.created_at,
                predictions=predictions,
            )
        )
    more = offset + token.max_count < len(found)
    next_token = token.model_copy(
        update={"continuation": str(offset + token.max_count) if more else None}
    )
    return PredictionQueryResult(token=next_token, results=results)


def get_item(
    session: Session, *, project: CvProject, principal: Principal, prediction_id: str
) -> ReviewItem:
    parsed = parse_id(prediction_id, code="BadRequestInvalidIds", what="prediction id")
    item: ReviewItem | None = session.scalar(
        _items(project, principal).where(ReviewItem.id == parsed)
    )
    if item is None:
        raise not_found("NotFound", f"no stored prediction {parsed}")
    return item


def image_of(item: ReviewItem) -> bytes:
    return read_image(item)


def delete(
    session: Session, *, project: CvProject, principal: Principal, ids: Sequence[str]
) -> int:
    if not ids:
        raise CustomVisionError("BadRequestPredictionIdsMissing", "name the predictions' ids")
    parsed = [parse_id(i, code="BadRequestInvalidIds", what="prediction id") for i in ids]
    mine = list(
        session.scalars(
            select(ReviewItem.id).where(
                ReviewItem.id.in_(parsed),
                ReviewItem.owner == principal.owner,
                ReviewItem.model_name == iterations.model_name(project),
            )
        )
    )
    lock_key(session, queue_lock(principal.owner))
    return queue.delete_items(session, owner=principal.owner, item_ids=mine)
