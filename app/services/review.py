"""The review queue: predictions a model was unsure of, kept for people to label.

A model name may have a `review_threshold`. A prediction (any protocol: they all go through
`inference.predict_images`) whose top probability is below it is kept for the owner of the
key that asked: the image file (once per owner, named by its sha256, under REVIEW_DIR), every
class's score, the model version and the time. Each owner's queue is bounded in items and in
bytes; past either limit the oldest items go, unlabeled ones first. Labeled items become
images of the next version of a dataset (`datasets.add_version`), and then leave the queue.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
from anyio import to_thread
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.errors import BadRequestError, ConflictError, NotFoundError
from app.core.metrics import REVIEW_CAPTURED, REVIEW_DROPPED
from app.db.base import utcnow
from app.db.locks import lock_key, model_name_key, review_queue_key
from app.db.models import ModelName, ReviewItem, ReviewStatus
from app.db.session import after_commit, session_scope
from app.services.auth import Principal, visible
from app.services.datasets import LabeledImage
from app.services.storage import get_storage

logger = logging.getLogger(__name__)

MAX_FILENAME_CHARS = 255


class _Image(Protocol):
    @property
    def data(self) -> bytes: ...

    @property
    def filename(self) -> str | None: ...


class _Thresholds:
    """Every model name's review threshold, read from the database at most once per
    MODEL_REFRESH_SECONDS in each process (and at once after this process changed one), so a
    prediction of a model without a threshold costs no database work. Kept per database URL:
    a process (a test) that switches databases does not carry thresholds over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[float, dict[str, float]]] = {}

    def cached(self, name: str) -> tuple[bool, float | None]:
        """(whether the cache is fresh, the name's threshold in it); never reads the database."""
        settings = get_settings()
        with self._lock:
            entry = self._loaded.get(settings.database_url)
        if entry is None or time.monotonic() - entry[0] > settings.model_refresh_seconds:
            return False, None
        return True, entry[1].get(name)

    def get(self, name: str) -> float | None:
        """The name's threshold, reading them all again if the cache is stale."""
        fresh, threshold = self.cached(name)
        if fresh:
            return threshold
        with session_scope() as session:
            rows = session.execute(
                select(ModelName.name, ModelName.review_threshold).where(
                    ModelName.review_threshold.is_not(None)
                )
            )
            thresholds = {row_name: float(value) for row_name, value in rows}
        with self._lock:
            self._loaded[get_settings().database_url] = (time.monotonic(), thresholds)
        return thresholds.get(name)

    def forget(self) -> None:
        with self._lock:
            self._loaded.pop(get_settings().database_url, None)


THRESHOLDS = _Thresholds()


def set_threshold(
    session: Session, *, name: str, threshold: float | None, principal: Principal
) -> ModelName:
    """Set (or with None, clear) the review threshold of one of the caller's model names;
    NotFoundError for names of other owners and unknown ones."""
    lock_key(session, model_name_key(name))
    row = get_model_name(session, name=name, principal=principal)
    row.review_threshold = threshold
    session.commit()  # before this process's cache is dropped, so it reads the new value
    THRESHOLDS.forget()
    return row


def get_model_name(session: Session, *, name: str, principal: Principal) -> ModelName:
    row = session.get(ModelName, name, populate_existing=True)
    if row is None or not principal.can_see(row.owner):
        raise NotFoundError(f"model {name!r} not found")
    return row


def _owner_prefix(owner: str | None) -> str:
    """The owner's folder of review images. Named by a hash: an owner name is any text."""
    return hashlib.sha256(str(owner).encode()).hexdigest()[:32]


def image_key(owner: str | None, digest: str) -> str:
    return f"{_owner_prefix(owner)}/{digest[:2]}/{digest}"


def queue_lock(owner: str | None) -> str:
    """The lock of the owner's queue and review images (app.db.locks.review_queue_key)."""
    return review_queue_key(_owner_prefix(owner))


def read_image(item: ReviewItem) -> bytes:
    """The item's image as it was sent (ObjectNotFoundError if it is gone)."""
    return get_storage().review.get_bytes(image_key(item.owner, item.image_sha256))


def _store_image(data: bytes, digest: str, *, owner: str | None) -> None:
    """Store the file once (atomically: a reader never sees half an image)."""
    store = get_storage().review
    key = image_key(owner, digest)
    if not store.exists(key):
        store.put_bytes(key, data)


def _clean_filename(filename: str | None) -> str | None:
    """A client's file name as it can be stored (no NUL, which PostgreSQL refuses)."""
    if not filename:
        return None
    return filename.replace("\x00", "")[:MAX_FILENAME_CHARS] or None


def capture_uncertain(
    *,
    principal: Principal,
    model_name: str,
    model_version: int,
    classes: Sequence[str],
    probabilities: np.ndarray,
    images: Sequence[_Image],
) -> int:
    """Keep the images whose top probability is below the model's review threshold in the
    caller's queue (the same image again refreshes its item); returns how many were kept."""
    threshold = THRESHOLDS.get(model_name)
    if threshold is None:
        return 0
    uncertain = [
        (image, row)
        for image, row in zip(images, probabilities, strict=True)
        if float(np.max(row)) < threshold
    ]
    if not uncertain:
        return 0
    settings = get_settings()
    owner = principal.owner
    digests = [hashlib.sha256(image.data).hexdigest() for image, _ in uncertain]
    # The files are written (and fsynced) before the lock, which on SQLite is the database's
    # one write lock: every other writer would wait for up to 64 files' writes.
    for (image, _), digest in zip(uncertain, digests, strict=True):
        _store_image(image.data, digest, owner=owner)
    with session_scope() as session:
        # The owner's lock: adding rows, and dropping the oldest with the files no other item
        # uses, are one step for each owner.
        lock_key(session, queue_lock(owner))
        for (image, row), digest in zip(uncertain, digests, strict=True):
            # Written again if a removal of unused files took it between the first write and
            # the lock (a cheap existence check otherwise): a row never lacks its file.
            _store_image(image.data, digest, owner=owner)
            top = int(np.argmax(row))
            answer = {
                "model_version": model_version,
                "scores": {
                    label: round(float(p), 6) for label, p in zip(classes, row, strict=True)
                },
                "top_label": classes[top],
                "top_probability": float(row[top]),
                "filename": _clean_filename(image.filename),
                "created_at": utcnow(),
            }
            item = session.scalar(
                select(ReviewItem).where(
                    ReviewItem.owner == owner,
                    ReviewItem.model_name == model_name,
                    ReviewItem.image_sha256 == digest,
                )
            )
            if item is None:
                session.add(
                    ReviewItem(
                        owner=owner,
                        model_name=model_name,
                        image_sha256=digest,
                        image_bytes=len(image.data),
                        status=ReviewStatus.PENDING.value,
                        **answer,
                    )
                )
            else:  # the newest answer; a label someone gave stays
                for key, value in answer.items():
                    setattr(item, key, value)
            session.flush()
        dropped = _drop_over_limits(session, owner=owner, settings=settings)
    REVIEW_CAPTURED.inc(len(uncertain))
    REVIEW_DROPPED.inc(dropped)
    return len(uncertain)


async def keep_uncertain(
    *,
    principal: Principal,
    model_name: str,
    model_version: int,
    classes: Sequence[str],
    probabilities: np.ndarray,
    images: Sequence[_Image],
) -> None:
    """`capture_uncertain` off the event loop. It never fails the prediction that asked: a
    queue that cannot be written is logged, and the client still gets its answer."""
    fresh, threshold = THRESHOLDS.cached(model_name)
    if fresh and threshold is None:
        return  # the common case: no threshold, no thread, no database
    try:
        await to_thread.run_sync(
            lambda: capture_uncertain(
                principal=principal,
                model_name=model_name,
                model_version=model_version,
                classes=classes,
                probabilities=probabilities,
                images=images,
            )
        )
    except Exception:
        logger.exception("predictions of %s could not be kept for review", model_name)


def _drop_over_limits(session: Session, *, owner: str | None, settings: Settings) -> int:
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
        _delete_items(session, owner=owner, item_ids=over, settings=settings)
    return len(over)


def _delete_items(
    session: Session, *, owner: str | None, item_ids: Sequence[uuid.UUID], settings: Settings
) -> int:
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


def discard_item(session: Session, *, item: ReviewItem, settings: Settings) -> None:
    """Remove the item (and its image, unless another item of the owner has it)."""
    lock_key(session, queue_lock(item.owner))
    _delete_items(session, owner=item.owner, item_ids=[item.id], settings=settings)
    session.commit()


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
    settings: Settings,
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


def consume(session: Session, *, selection: LabeledSelection, settings: Settings) -> None:
    """Remove the items that went into a dataset version, in that version's transaction;
    ConflictError if one was discarded or dropped meanwhile."""
    lock_key(session, queue_lock(selection.owner))
    deleted = _delete_items(
        session, owner=selection.owner, item_ids=selection.item_ids, settings=settings
    )
    if deleted != len(selection.item_ids):
        raise ConflictError("review items changed meanwhile: send the request again")


def image_media_type(data: bytes) -> str:
    """The image's type from its first bytes; anything else is served as plain bytes."""
    signatures = (
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"BM", "image/bmp"),
        (b"II*\x00", "image/tiff"),
        (b"MM\x00*", "image/tiff"),
    )
    for signature, media_type in signatures:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
