"""Keeping uncertain predictions: the images whose top probability is below their model's
review threshold, and those answered unknown, go into the queue of the owner of the key that
asked."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from anyio import to_thread
from sqlalchemy import select

from app.core.config import get_settings
from app.core.metrics import REVIEW_CAPTURED, REVIEW_DROPPED
from app.db.base import utcnow
from app.db.locks import lock_key
from app.db.models import ReviewItem, ReviewStatus
from app.db.session import session_scope
from app.services.auth import Principal
from app.services.review.images import queue_lock, store_image
from app.services.review.queue import drop_over_limits
from app.services.review.thresholds import THRESHOLDS

logger = logging.getLogger(__name__)

MAX_FILENAME_CHARS = 255


class _Image(Protocol):
    @property
    def data(self) -> bytes: ...

    @property
    def filename(self) -> str | None: ...


def _clean_filename(filename: str | None) -> str | None:
    """A client's file name as it can be stored (no NUL, which PostgreSQL refuses)."""
    if not filename:
        return None
    return filename.replace("\x00", "")[:MAX_FILENAME_CHARS] or None


def label_near_threshold(
    row: np.ndarray, thresholds: np.ndarray, *, review_threshold: float
) -> bool:
    """Whether a multi-label answer has a label near its threshold: within 1 - the review
    threshold of it (a review threshold of 0.8 keeps the images with a label between its
    threshold - 0.2 and + 0.2), the same margin a multiclass answer of that threshold has."""
    return bool(np.any(np.abs(row - thresholds) < 1.0 - review_threshold))


def capture_uncertain(
    *,
    principal: Principal,
    model_name: str,
    model_version: int,
    classes: Sequence[str],
    probabilities: np.ndarray,
    images: Sequence[_Image],
    unknown: Sequence[bool] | None = None,
    thresholds: np.ndarray | None = None,
) -> int:
    """Keep the images whose top probability is below the model's review threshold, or that
    were answered unknown, in the caller's queue (the same image again refreshes its item);
    returns how many were kept. A multi-label model's image is kept where a label is near its
    threshold (`label_near_threshold`)."""
    threshold = THRESHOLDS.get(model_name)
    if threshold is None:
        return 0
    unknown = unknown or [False] * len(images)

    def unsure(row: np.ndarray) -> bool:
        if thresholds is not None:
            return label_near_threshold(row, thresholds, review_threshold=threshold)
        return float(np.max(row)) < threshold

    uncertain = [
        (image, row)
        for image, row, outlier in zip(images, probabilities, unknown, strict=True)
        if outlier or unsure(row)
    ]
    return keep_answers(
        principal=principal,
        model_name=model_name,
        model_version=model_version,
        classes=classes,
        answers=uncertain,
    )


def keep_answers(
    *,
    principal: Principal,
    model_name: str,
    model_version: int,
    classes: Sequence[str],
    answers: Sequence[tuple[_Image, np.ndarray]],
) -> int:
    """Keep these images with their answers (each row: every class's probability) in the
    caller's queue, whatever their scores: the same image again refreshes its item, and the
    queue's limits drop the oldest. Returns how many were kept."""
    uncertain = list(answers)
    if not uncertain:
        return 0
    settings = get_settings()
    owner = principal.owner
    digests = [hashlib.sha256(image.data).hexdigest() for image, _ in uncertain]
    # The files are written (and fsynced) before the lock, which on SQLite is the database's
    # one write lock: every other writer would wait for up to 64 files' writes.
    for (image, _), digest in zip(uncertain, digests, strict=True):
        store_image(image.data, digest, owner=owner)
    with session_scope() as session:
        # The owner's lock: adding rows, and dropping the oldest with the files no other item
        # uses, are one step for each owner.
        lock_key(session, queue_lock(owner))
        for (image, row), digest in zip(uncertain, digests, strict=True):
            # Written again if a removal of unused files took it between the first write and
            # the lock (a cheap existence check otherwise): a row never lacks its file.
            store_image(image.data, digest, owner=owner)
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
        dropped = drop_over_limits(session, owner=owner, settings=settings)
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
    unknown: Sequence[bool] | None = None,
    thresholds: np.ndarray | None = None,
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
                unknown=unknown,
                thresholds=thresholds,
            )
        )
    except Exception:
        logger.exception("predictions of %s could not be kept for review", model_name)
