"""An owner's review queue: its items listed, shown, labeled, discarded and counted, and kept
within the owner's limits (the oldest unlabeled items go first)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import BadRequestError, NotFoundError
from app.db.base import utcnow
from app.db.locks import lock_key
from app.db.models import ReviewItem, ReviewStatus
from app.db.session import after_commit, session_scope
from app.services.auth import Principal, visible
from app.services.review.images import image_key, queue_lock
from app.services.storage import get_storage


def drop_over_limits(session: Session, *, owner: str | None, settings: Settings) -> int:
    """Delete the owner's items past the count or byte limit: labeled ones are kept first,
    then the newest. Returns how many went."""
    rows = sorted(
        session.execute(
            select(
                ReviewItem.id, ReviewItem.image_bytes, ReviewItem.status, ReviewItem.created_at
            ).where(ReviewItem.owner == owner)
        ),
        key=lambda r: (r.status == ReviewStatus.LABELED.value, r.created_at),
        reverse=True,
    )
    kept_items = kept_bytes = 0
    over: list[uuid.UUID] = []
    for row in rows:
        if (
            kept_items + 1 > settings.review_max_items_per_owner
            or kept_bytes + row.image_bytes > settings.review_max_bytes_per_owner
        ):
            over.append(row.id)
            continue
        kept_items += 1
        kept_bytes += row.image_bytes
    if over:
        delete_items(session, owner=owner, item_ids=over)
    return len(over)


def delete_items(session: Session, *, owner: str | None, item_ids: Sequence[uuid.UUID]) -> int:
    """Delete these items of the owner; once that is committed, the image files no item of
    theirs uses any more go too (remove_unused_images): a failed commit keeps every file its
    rows need. Call with the owner's review lock held. Returns how many rows went."""
    digests = frozenset(
        session.scalars(select(ReviewItem.image_sha256).where(ReviewItem.id.in_(item_ids)))
    )
    deleted = session.execute(
        delete(ReviewItem).where(ReviewItem.owner == owner, ReviewItem.id.in_(item_ids))
    ).rowcount  # type: ignore[attr-defined]
    if digests:
        after_commit(session, partial(remove_unused_images, owner=owner, digests=digests))
    return int(deleted)


def remove_unused_images(*, owner: str | None, digests: frozenset[str]) -> int:
    """Remove the owner's image files among `digests` that no item of theirs uses, checked
    under the owner's lock (a capture of the same image since it was unused keeps it).
    Returns how many went."""
    with session_scope() as session:
        lock_key(session, queue_lock(owner))
        used = set(
            session.scalars(
                select(ReviewItem.image_sha256).where(
                    ReviewItem.owner == owner, ReviewItem.image_sha256.in_(digests)
                )
            )
        )
        store = get_storage().review
        for digest in digests - used:
            store.delete(image_key(owner, digest))
    return len(digests - used)


def get_item(session: Session, *, item_id: uuid.UUID, principal: Principal) -> ReviewItem:
    """The item if the caller may see it, or NotFoundError (for another owner's, too)."""
    item = session.get(ReviewItem, item_id)
    if item is None or not principal.can_see(item.owner):
        raise NotFoundError(f"review item {item_id} not found")
    return item


def list_items(
    session: Session,
    *,
    principal: Principal,
    model: str | None,
    status: ReviewStatus | None,
    limit: int,
    offset: int,
) -> list[ReviewItem]:
    """The caller's items, least sure first (then newest): the ones most worth a label."""
    query = visible(select(ReviewItem), ReviewItem.owner, principal)
    if model is not None:
        query = query.where(ReviewItem.model_name == model)
    if status is not None:
        query = query.where(ReviewItem.status == status.value)
    query = query.order_by(ReviewItem.top_probability, ReviewItem.created_at.desc())
    return list(session.scalars(query.limit(limit).offset(offset)))


def label_item(session: Session, *, item: ReviewItem, label: str) -> ReviewItem:
    """Give the item its true class: one of the classes its model answered with."""
    lock_key(session, queue_lock(item.owner))  # not while it is being dropped
    if session.get(ReviewItem, item.id, populate_existing=True) is None:
        raise NotFoundError(f"review item {item.id} not found")
    if label not in item.scores:
        raise BadRequestError(
            f"{label!r} is not a class of {item.model_name}: one of "
            f"{', '.join(sorted(item.scores))}"
        )
    item.label = label
    item.status = ReviewStatus.LABELED.value
    item.labeled_at = utcnow()
    session.flush()
    return item


def discard_item(session: Session, *, item: ReviewItem) -> None:
    """Remove the item (and its image, unless another item of the owner has it)."""
    lock_key(session, queue_lock(item.owner))
    delete_items(session, owner=item.owner, item_ids=[item.id])


@dataclass(frozen=True)
class QueueCounts:
    pending: int
    labeled: int
    bytes: int
    by_model: dict[str, dict[str, int]]


def counts(session: Session, *, principal: Principal) -> QueueCounts:
    """The caller's items by model and status, and the bytes their images take."""
    query = visible(
        select(
            ReviewItem.model_name, ReviewItem.status, func.count(), func.sum(ReviewItem.image_bytes)
        ),
        ReviewItem.owner,
        principal,
    ).group_by(ReviewItem.model_name, ReviewItem.status)
    by_model: dict[str, dict[str, int]] = {}
    total_bytes = 0
    for model_name, status, count, size in session.execute(query):
        entry = by_model.setdefault(model_name, {s.value: 0 for s in ReviewStatus})
        entry[status] = int(count)
        total_bytes += int(size or 0)
    return QueueCounts(
        pending=sum(m[ReviewStatus.PENDING.value] for m in by_model.values()),
        labeled=sum(m[ReviewStatus.LABELED.value] for m in by_model.values()),
        bytes=total_bytes,
        by_model=by_model,
    )


def queue_totals(session: Session) -> tuple[dict[str, int], int]:
    """Every owner's items by status, and their bytes: what /metrics reports."""
    by_status = {status.value: 0 for status in ReviewStatus}
    total_bytes = 0
    rows = session.execute(
        select(ReviewItem.status, func.count(), func.sum(ReviewItem.image_bytes)).group_by(
            ReviewItem.status
        )
    )
    for status, count, size in rows:
        by_status[status] = int(count)
        total_bytes += int(size or 0)
    return by_status, total_bytes
