"""Stored files that no database row accounts for, found by comparing the storage with the
database and removed on request: what a crash left between publishing files and committing
their row (a dataset's images, a version's files before its manifest, an export archive
before its row), cached features of datasets that are gone, review images no item uses, and
SavedModel archives kept by releases before exports were built by workers."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import select

from app.core.config import get_settings
from app.db.locks import lock_key, review_queue_key
from app.db.models import Dataset, ModelExport, ModelVersion, ReviewItem
from app.db.session import session_scope
from app.services import review
from app.services.storage import get_storage, owner_key
from models_store import ObjectStore, StoredObject

# Files younger than this may belong to an upload or a job that is still publishing them
# (its row is committed only after its files are all stored): never called orphans.
DEFAULT_GRACE_SECONDS = 3600.0

# Where releases before exports were built by workers kept SavedModel archives, by the
# version's checksum (under SMALLVISION_DATA_DIR): none of them is read any more.
LEGACY_EXPORTS_FOLDER = "exports"


@dataclass(frozen=True)
class Orphan:
    # "datasets", "models", "review", "features" or "legacy-exports"
    area: str
    # The folder (dataset, model version), the files' shared name prefix (an export, a
    # dataset's features) or the file (review image, legacy archive) in that area.
    prefix: str
    objects: int
    size_bytes: int


def _grouped(
    found: Iterable[StoredObject], group: Callable[[str], str | None]
) -> dict[str, list[StoredObject]]:
    """Objects by `group(key)` (skipped where it is None)."""
    groups: dict[str, list[StoredObject]] = defaultdict(list)
    for item in found:
        if (name := group(item.key)) is not None:
            groups[name].append(item)
    return groups


def _by_depth(depth: int) -> Callable[[str], str]:
    return lambda key: "/".join(key.split("/")[:depth])


def _export_file(key: str) -> str | None:
    """`<name>/v<n>/exports/<format>/<file>` as such, anything else None."""
    parts = key.split("/")
    return key if len(parts) == 5 and parts[2] == "exports" else None


def _dataset_features(key: str) -> str | None:
    """`<owner folder>/<fingerprint>-...`: the owner's folder and that prefix; a file of an
    earlier naming on its own; None for a file of no dataset (a base's extractor)."""
    from app.ml.features import features_prefix, fingerprint_of_feature_file

    folder, _, name = key.rpartition("/")
    fingerprint = fingerprint_of_feature_file(name)
    if fingerprint is None:
        return None
    return f"{folder}/{features_prefix(fingerprint)}" if fingerprint else key


def find_orphans(*, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> list[Orphan]:
    """Every folder or file in the storage areas that the database does not know of, and
    that has not changed for `grace_seconds`."""
    from app.ml.features import features_prefix

    storage = get_storage()
    with session_scope() as session:
        datasets = {str(dataset_id) for dataset_id in session.scalars(select(Dataset.id))}
        features = {
            f"{owner_key(owner)}/{features_prefix(fingerprint)}"
            for owner, fingerprint in session.execute(select(Dataset.owner, Dataset.fingerprint))
            if fingerprint
        }
        versions = set(session.scalars(select(ModelVersion.path)))
        exports = {key for key in session.scalars(select(ModelExport.key)) if key is not None}
        images = {
            review.image_key(owner, digest)
            for owner, digest in session.execute(select(ReviewItem.owner, ReviewItem.image_sha256))
        }
    models = list(storage.models.keys(""))
    areas: list[tuple[str, dict[str, list[StoredObject]], set[str]]] = [
        ("datasets", _grouped(storage.datasets.keys(""), _by_depth(1)), datasets),
        ("models", _grouped(models, _by_depth(2)), versions),
        # an export's files inside a version the database knows, without their export row
        ("models", _grouped(models, _export_file), exports | _prefixes_outside(versions, models)),
        ("features", _grouped(storage.features.keys(""), _dataset_features), features),
        ("review", _grouped(storage.review.keys(""), _by_depth(3)), images),
    ]
    recent = time.time() - grace_seconds
    orphans = []
    for area, groups, known in areas:
        for prefix, found in sorted(groups.items()):
            if prefix in known or any(item.modified > recent for item in found):
                continue
            orphans.append(
                Orphan(
                    area=area,
                    prefix=prefix,
                    objects=len(found),
                    size_bytes=sum(item.size for item in found),
                )
            )
    return orphans + _legacy_exports(recent)


def _prefixes_outside(versions: set[str], models: list[StoredObject]) -> set[str]:
    """Export files of versions the database does not know: their whole version folder is an
    orphan already, so they are not listed twice."""
    return {
        key
        for item in models
        if (key := _export_file(item.key)) is not None and _by_depth(2)(key) not in versions
    }


def _legacy_exports(recent: float) -> list[Orphan]:
    folder = get_settings().data_dir / LEGACY_EXPORTS_FOLDER
    found = []
    for path in sorted(folder.glob("*-savedmodel.tar.gz")) if folder.is_dir() else ():
        stat = path.stat()
        if stat.st_mtime <= recent:
            found.append(Orphan("legacy-exports", path.name, 1, stat.st_size))
    return found


def remove_orphans(orphans: list[Orphan]) -> None:
    storage = get_storage()
    for orphan in orphans:
        if orphan.area == "review":
            _remove_review_image(orphan.prefix)
        elif orphan.area == "legacy-exports":
            (get_settings().data_dir / LEGACY_EXPORTS_FOLDER / orphan.prefix).unlink(
                missing_ok=True
            )
        elif orphan.area == "features" or _export_file(orphan.prefix) is not None:
            store = storage.features if orphan.area == "features" else storage.models
            _delete_named(store, orphan.prefix)
        else:
            store = storage.datasets if orphan.area == "datasets" else storage.models
            store.delete_prefix(f"{orphan.prefix}/")


def _delete_named(store: ObjectStore, prefix: str) -> None:
    """Delete the objects whose keys start with `prefix` (within its folder)."""
    folder = prefix.rpartition("/")[0]
    for found in list(store.keys(f"{folder}/" if folder else "")):
        if found.key.startswith(prefix):
            store.delete(found.key)


def _remove_review_image(key: str) -> None:
    """Delete an orphaned review image under its owner's review lock, unless an item was
    added for it since it was found: a prediction of the same image may be captured at this
    very moment (it finds the file there, so it does not write it again)."""
    owner_folder, _, rest = key.partition("/")
    digest = rest.rpartition("/")[2]
    with session_scope() as session:
        lock_key(session, review_queue_key(owner_folder))
        owners = session.scalars(
            select(ReviewItem.owner).where(ReviewItem.image_sha256 == digest)
        ).all()
        if any(review.image_key(owner, digest) == key for owner in owners):
            return
        get_storage().review.delete(key)
