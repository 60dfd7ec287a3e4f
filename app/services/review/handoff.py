"""Labeled review items handed to a new dataset version: chosen as its images, then removed
from the queue in the version's own transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import BadRequestError, ConflictError, NotFoundError
from app.db.locks import lock_key
from app.db.models import ReviewItem, ReviewStatus
from app.services.datasets import LabeledImage
from app.services.review.images import queue_lock, read_image
from app.services.review.queue import delete_items


@dataclass(frozen=True)
class LabeledSelection:
    """Labeled items chosen for a dataset version: their images and ids, to consume them."""

    images: list[LabeledImage]
    item_ids: list[uuid.UUID]
    owner: str | None


def labeled_items(
    session: Session,
    *,
    owner: str | None,
    model: str | None,
    item_ids: Sequence[uuid.UUID] | None,
) -> LabeledSelection:
    """The owner's labeled items (of one model, or these ids) as images for a dataset version.
    Ids that are not the owner's labeled items are a 404 / 409."""
    query = select(ReviewItem).where(ReviewItem.owner == owner)
    if model is not None:
        query = query.where(ReviewItem.model_name == model)
    if item_ids is not None:
        query = query.where(ReviewItem.id.in_(item_ids))
    else:
        query = query.where(ReviewItem.status == ReviewStatus.LABELED.value)
    items = list(session.scalars(query.order_by(ReviewItem.created_at)))
    if item_ids is not None:
        if missing := sorted(str(i) for i in set(item_ids) - {item.id for item in items}):
            raise NotFoundError(f"review items not found: {', '.join(missing[:20])}")
        if unlabeled := [str(item.id) for item in items if item.label is None]:
            raise ConflictError(f"review items not labeled yet: {', '.join(unlabeled[:20])}")
    if not items:
        raise BadRequestError("no labeled review items: label some first")
    images = [
        LabeledImage(
            read=partial(read_image, item),
            label=str(item.label),
            source=f"review/{item.id}" + (f" ({item.filename})" if item.filename else ""),
        )
        for item in items
    ]
    return LabeledSelection(images=images, item_ids=[item.id for item in items], owner=owner)


def consume(session: Session, *, selection: LabeledSelection) -> None:
    """Remove the items that went into a dataset version, in that version's transaction;
    ConflictError if one was discarded or dropped meanwhile."""
    lock_key(session, queue_lock(selection.owner))
    deleted = delete_items(session, owner=selection.owner, item_ids=selection.item_ids)
    if deleted != len(selection.item_ids):
        raise ConflictError("review items changed meanwhile: send the request again")
