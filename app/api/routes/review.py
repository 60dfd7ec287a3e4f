"""The review queue: a model's review threshold, and the uncertain predictions it kept, to
view, label or discard."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from app.api.bodies import json_body_openapi, read_json_model
from app.api.deps import MAX_OFFSET, SessionDep, Trainer
from app.core.config import get_settings
from app.core.errors import NotFoundError
from app.db.models import ReviewItem, ReviewStatus
from app.schemas.review import (
    ReviewCounts,
    ReviewItemRead,
    ReviewLabel,
    ReviewThreshold,
    ReviewThresholdRead,
)
from app.services import review
from models_store import ObjectNotFoundError
from models_store.store import NAME_PATTERN

router = APIRouter(tags=["review"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "not found (or not yours)"}}


# Bodies are read after the key is checked (see app/api/bodies.py).
async def _threshold_body(request: Request, _: Trainer) -> ReviewThreshold:
    return await read_json_model(request, ReviewThreshold)


async def _label_body(request: Request, _: Trainer) -> ReviewLabel:
    return await read_json_model(request, ReviewLabel)


def _valid_item(item_id: uuid.UUID, session: SessionDep, principal: Trainer) -> ReviewItem:
    return review.get_item(session, item_id=item_id, principal=principal)


ValidItem = Annotated[ReviewItem, Depends(_valid_item)]


@router.get("/models/{name}/review", response_model=ReviewThresholdRead, responses=_NOT_FOUND)
def read_threshold(name: str, session: SessionDep, principal: Trainer) -> ReviewThresholdRead:
    """The model's review threshold (null: its predictions are not kept)."""
    row = review.get_model_name(session, name=name, principal=principal)
    return ReviewThresholdRead(model=row.name, review_threshold=row.review_threshold)


@router.put(
    "/models/{name}/review",
    response_model=ReviewThresholdRead,
    responses=_NOT_FOUND,
    openapi_extra=json_body_openapi(ReviewThreshold),
)
def set_threshold(
    name: str,
    body: Annotated[ReviewThreshold, Depends(_threshold_body)],
    session: SessionDep,
    principal: Trainer,
) -> ReviewThresholdRead:
    """Keep this model's predictions whose top probability is below `threshold` for review
    (every API process applies it within MODEL_REFRESH_SECONDS); null stops it."""
    row = review.set_threshold(session, name=name, threshold=body.threshold, principal=principal)
    return ReviewThresholdRead(model=row.name, review_threshold=row.review_threshold)


@router.get("/review/items", response_model=list[ReviewItemRead])
def list_items(
    session: SessionDep,
    principal: Trainer,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN.pattern)] = None,
    status: ReviewStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[ReviewItemRead]:
    """Your kept predictions, least sure first (`model`, `status`: pending or labeled)."""
    items = review.list_items(
        session, principal=principal, model=model, status=status, limit=limit, offset=offset
    )
    return [ReviewItemRead.model_validate(item) for item in items]


@router.get("/review/counts", response_model=ReviewCounts)
def queue_counts(session: SessionDep, principal: Trainer) -> ReviewCounts:
    """How many of your items wait for a label, how many are labeled, per model, and the
    bytes they hold against your limits."""
    found = review.counts(session, principal=principal)
    settings = get_settings()
    return ReviewCounts(
        pending=found.pending,
        labeled=found.labeled,
        bytes=found.bytes,
        by_model=found.by_model,
        max_items=settings.review_max_items_per_owner,
        max_bytes=settings.review_max_bytes_per_owner,
    )


@router.get("/review/items/{item_id}", response_model=ReviewItemRead, responses=_NOT_FOUND)
def read_item(item: ValidItem) -> ReviewItemRead:
    return ReviewItemRead.model_validate(item)


@router.get(
    "/review/items/{item_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, **_NOT_FOUND},
)
def item_image(item: ValidItem) -> Response:
    """The image as it was sent. Served as an image (never as a page: no sniffing, no
    scripts), or as plain bytes if its type is not a known image's."""
    try:
        data = review.read_image(item)
    except ObjectNotFoundError:
        raise NotFoundError(f"the image of review item {item.id} is gone") from None
    return Response(
        content=data,
        media_type=review.image_media_type(data),
        headers={
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=3600",
        },
    )


@router.post(
    "/review/items/{item_id}/label",
    response_model=ReviewItemRead,
    responses={**_NOT_FOUND, 400: {"description": "not one of the model's classes"}},
    openapi_extra=json_body_openapi(ReviewLabel),
)
def label_item(
    item: ValidItem, body: Annotated[ReviewLabel, Depends(_label_body)], session: SessionDep
) -> ReviewItemRead:
    """Give the image its true class (one of the model's); it goes into the dataset's next
    version with `POST /datasets/{id}/versions/from-review`."""
    return ReviewItemRead.model_validate(review.label_item(session, item=item, label=body.label))


@router.delete(
    "/review/items/{item_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND
)
def discard_item(item: ValidItem, session: SessionDep) -> Response:
    """Discard the item and its image."""
    review.discard_item(session, item=item)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
