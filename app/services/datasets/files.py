"""A dataset version's files in the datasets store: publishing a staged folder, reading its
manifest and images (downloaded to this machine from a bucket when needed), and removing
them, with its cached features."""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import ConflictError
from app.db.models import Dataset
from app.db.session import after_rollback
from app.services.datasets.ingest import MANIFEST_NAME
from app.services.storage import get_storage, owner_key, trim_cache
from models_store import file_sha256


@contextmanager
def staging() -> Iterator[Path]:
    """A staging folder of the datasets store for a version being made: removed if anything
    fails before it is published (publishing moves it into place)."""
    folder = get_storage().datasets.staging_folder()
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def publish(session: Session, *, folder: Path, dataset_id: uuid.UUID) -> None:
    """Publish a new dataset version's folder (its images, then its manifest: a dataset
    without a manifest does not exist) before its row is committed (by the caller's session,
    before the client hears 201: a dataset it was told exists, does); if the transaction rolls
    back instead, the files go again."""
    store = get_storage().datasets
    store.publish_folder(folder, str(dataset_id), commit_file=MANIFEST_NAME)
    after_rollback(session, functools.partial(remove_files, dataset_id))


def remove_files(dataset_id: uuid.UUID) -> None:
    store = get_storage().datasets
    store.delete(f"{dataset_id}/{MANIFEST_NAME}")  # first: the dataset stops existing at once
    store.delete_prefix(f"{dataset_id}/")


def load_manifest(dataset_id: uuid.UUID) -> dict[str, Any]:
    """The dataset's manifest: classes and every image's split, label, file and size."""
    manifest: dict[str, Any] = json.loads(
        get_storage().datasets.get_bytes(f"{dataset_id}/{MANIFEST_NAME}")
    )
    return manifest


def read_image(dataset: Dataset, item: dict[str, Any]) -> bytes:
    """The file of one image of the dataset (an entry of its manifest)."""
    return get_storage().datasets.get_bytes(f"{dataset.id}/{item['file']}")


def local_images(dataset_id: uuid.UUID, items: Sequence[dict[str, Any]]) -> Path:
    """A folder on this machine in which every item's `file` (`images/<aa>/<sha256>`) is
    found: the dataset's own folder in local storage; with a bucket, this machine's image
    cache, into which missing images are downloaded (in parallel) and checked against their
    sha256 (a file that does not match is removed, and the load fails)."""
    storage = get_storage()
    own = storage.datasets.local_path(f"{dataset_id}/{MANIFEST_NAME}")
    if own is not None:
        return own.parent
    cache = storage.image_cache
    missing: dict[str, str] = {}
    for item in items:
        try:
            os.utime(cache / item["file"])  # used now: the cache trims the least recently used
        except FileNotFoundError:
            missing[item["file"]] = item["sha256"]
    partial = {name: cache / f"{name}.{uuid.uuid4().hex}.partial" for name in missing}
    try:
        storage.datasets.download_many((f"{dataset_id}/{name}", partial[name]) for name in missing)
        for name, digest in missing.items():
            if file_sha256(partial[name]) != digest:
                raise ConflictError(f"image {digest} of dataset {dataset_id} is damaged in storage")
            os.replace(partial[name], cache / name)
    finally:
        for path in partial.values():
            path.unlink(missing_ok=True)
    if missing:
        trim_cache(storage, max_bytes=get_settings().cache_max_bytes)
    return cache


def remove_features(*, owner: str | None, fingerprint: str) -> int:
    """Remove the owner's cached features of the images with this fingerprint: in the
    storage (a folder, or the bucket every worker shares) and this machine's copies of bucket
    objects. Returns how many stored files went."""
    from app.ml.features import features_prefix  # (app.ml.features loads Keras)

    storage = get_storage()
    folder = owner_key(owner)
    prefix = features_prefix(fingerprint)
    removed = 0
    for found in list(storage.features.keys(f"{folder}/")):
        if found.key.rpartition("/")[2].startswith(prefix):
            storage.features.delete(found.key)
            removed += 1
    for copy in (storage.cache_dir / "features" / folder).glob(f"{prefix}*"):
        copy.unlink(missing_ok=True)
    return removed
