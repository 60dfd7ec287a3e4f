"""Stored files that no database row accounts for: what a crash left between publishing
files and committing their row (a dataset's images, a version's files before its manifest),
found by comparing the storage with the database, and removed on request."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select

from app.db.models import Dataset, ModelVersion, ReviewItem
from app.db.session import session_scope
from app.services import review
from app.services.storage import get_storage
from models_store import ObjectStore, StoredObject

# Files younger than this may belong to an upload or a job that is still publishing them
# (its row is committed only after its files are all stored): never called orphans.
DEFAULT_GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class Orphan:
    area: str  # "datasets", "models" or "review"
    prefix: str  # the folder (dataset, model version) or file (review image) in that area
    objects: int
    size_bytes: int


def _grouped(store: ObjectStore, depth: int) -> dict[str, list[StoredObject]]:
    """The store's objects by their first `depth` key parts (a dataset's or version's folder)."""
    groups: dict[str, list[StoredObject]] = defaultdict(list)
    for found in store.keys(""):
        groups["/".join(found.key.split("/")[:depth])].append(found)
    return groups


def find_orphans(*, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> list[Orphan]:
    """Every folder or file in the datasets, models and review areas that the database does
    not know of, and that has not changed for `grace_seconds`."""
    storage = get_storage()
    with session_scope() as session:
        datasets = {str(dataset_id) for dataset_id in session.scalars(select(Dataset.id))}
        versions = set(session.scalars(select(ModelVersion.path)))
        images = {
            review.image_key(owner, digest)
            for owner, digest in session.execute(select(ReviewItem.owner, ReviewItem.image_sha256))
        }
    recent = time.time() - grace_seconds
    orphans = []
    for area, store, depth, known in (
        ("datasets", storage.datasets, 1, datasets),
        ("models", storage.models, 2, versions),
        ("review", storage.review, 3, images),
    ):
        for prefix, found in sorted(_grouped(store, depth).items()):
            if prefix in known or any(item.modified > recent for item in found):
                continue
            orphans.append(
                Orphan(area=area, prefix=prefix, objects=len(found),
                       size_bytes=sum(item.size for item in found))
            )  # fmt: skip
    return orphans


def remove_orphans(orphans: list[Orphan]) -> None:
    storage = get_storage()
    stores = {"datasets": storage.datasets, "models": storage.models, "review": storage.review}
    for orphan in orphans:
        store = stores[orphan.area]
        if orphan.area == "review":
            store.delete(orphan.prefix)
        else:
            store.delete_prefix(f"{orphan.prefix}/")
