"""The review queue's image files: one per owner and content (its sha256), in the review
storage area under a folder named by a hash of the owner."""

from __future__ import annotations

import hashlib

from app.db.locks import review_queue_key
from app.db.models import ReviewItem
from app.services.storage import get_storage


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


def store_image(data: bytes, digest: str, *, owner: str | None) -> None:
    """Store the file once (atomically: a reader never sees half an image)."""
    store = get_storage().review
    key = image_key(owner, digest)
    if not store.exists(key):
        store.put_bytes(key, data)


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
