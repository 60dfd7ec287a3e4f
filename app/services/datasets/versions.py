"""Dataset versions: a dataset's images never change in place; a change makes a new version
(the next number of its lineage) with its own folder, manifest and fingerprint."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import BadRequestError, ConflictError, NotFoundError
from app.db.locks import dataset_lineage_key, lock_key
from app.db.models import Dataset
from app.ml.config import Task
from app.ml.data import NEGATIVE_LABEL, item_labels
from app.services.auth import Principal, visible
from app.services.datasets.crud import get_dataset, record_version
from app.services.datasets.files import load_manifest, local_images, staging
from app.services.datasets.ingest import Ingest, IngestImage, LabeledImage, SplitOptions
from app.services.datasets.label_lists import LABEL_SEPARATOR
from models_store import ObjectNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionOptions:
    """How the images of a new version are split (those that come without split folders),
    which images of the parent it leaves out (by sha256), and which version it is made from
    (default: the latest)."""

    validation_fraction: float
    test_fraction: float
    seed: int
    remove: frozenset[str] = frozenset()
    parent_version: int | None = None


def resolve_dataset_version(
    session: Session, *, dataset_id: uuid.UUID, version: int | None, principal: Principal | None
) -> Dataset:
    """Version `version` of the dataset that `dataset_id` (the id of any of its versions)
    belongs to; its latest version without one. NotFoundError for others' datasets."""
    named = get_dataset(session, dataset_id=dataset_id, principal=principal)
    query = select(Dataset).where(Dataset.lineage_id == named.lineage_id)
    if version is None:
        query = query.order_by(Dataset.version.desc()).limit(1)
    else:
        query = query.where(Dataset.version == version)
    found = session.scalar(visible(query, Dataset.owner, principal))
    if found is None:
        raise NotFoundError(f"dataset {dataset_id} has no version {version}")
    return found


def list_versions(session: Session, *, dataset: Dataset, principal: Principal) -> list[Dataset]:
    """Every version of the dataset `dataset` belongs to, oldest first."""
    query = visible(
        select(Dataset).where(Dataset.lineage_id == dataset.lineage_id), Dataset.owner, principal
    )
    return list(session.scalars(query.order_by(Dataset.version)))


def add_version(
    session: Session,
    *,
    dataset_id: uuid.UUID,
    principal: Principal,
    options: VersionOptions,
    settings: Settings,
    zip_path: Path | None = None,
    labeled: Sequence[LabeledImage] = (),
    before_commit: Callable[[Session], None] = lambda _: None,
) -> Dataset:
    """A new version of a dataset: its parent's images minus `options.remove`, plus the images
    of a zip of class folders and/or labeled image files, deduplicated and checked for leakage
    against the parent's splits as an upload is (images already in the dataset keep their
    split and class). New images without split folders are split like an upload's. The new
    version has its own folder, manifest and fingerprint; its parent stays as it was.

    The work is done before any lock is taken; then, under the lineage's lock, the version
    is numbered (ConflictError if another one was added from the same parent meanwhile) and
    `before_commit(session)` runs (it may refuse); the caller's session commits it all."""
    parent = resolve_dataset_version(
        session, dataset_id=dataset_id, version=options.parent_version, principal=principal
    )
    parent_id, lineage_id, parent_number = parent.id, parent.lineage_id, parent.version
    new_id = uuid.uuid4()
    with staging() as folder:
        ingest = Ingest(folder, settings=settings, what="the new version", task=Task(parent.task))
        try:
            existing, removed = _existing_images(
                parent, remove=options.remove, images_dir=ingest.images_dir
            )
        except (FileNotFoundError, ObjectNotFoundError):
            # Its files went while they were being linked: deleted at this very moment.
            raise _parent_deleted(parent_number) from None
        ingest.add_existing(existing)
        if zip_path is not None:
            ingest.add_zip(zip_path, known_classes=frozenset(parent.class_names))
        ingest.add_labeled(labeled)
        built = ingest.finish(
            SplitOptions(
                validation_fraction=options.validation_fraction,
                test_fraction=options.test_fraction,
                seed=options.seed,
            )
        )
        diff = _version_diff(parent, built.images, removed)
        if not diff["added"]["count"] and not diff["removed"]["count"]:
            report = built.report
            raise BadRequestError(
                "the new version would equal version "
                f"{parent_number}: no image was added ({len(report.duplicates)} already in "
                f"it, {len(report.leakage)} in another split, {len(report.conflicts)} under "
                f"another class, {len(report.skipped)} skipped) and none removed"
            )

        lock_key(session, dataset_lineage_key(lineage_id))
        if session.scalar(select(Dataset.id).where(Dataset.id == parent_id)) is None:
            raise _parent_deleted(parent_number)
        latest = session.scalar(
            select(func.max(Dataset.version)).where(Dataset.lineage_id == lineage_id)
        )
        if options.parent_version is None and latest != parent_number:
            raise ConflictError(
                f"version {latest} of the dataset was added meanwhile: send the request again "
                "to build on it"
            )
        dataset = record_version(
            session,
            built=built,
            folder=folder,
            dataset_id=new_id,
            owner=parent.owner,
            name=parent.name,
            lineage_id=lineage_id,
            version=(latest or 0) + 1,
            parent_id=parent_id,
            diff=diff,
            before_publish=before_commit,
        )
    logger.info(
        "dataset %s v%d made from v%d: %d added, %d removed",
        lineage_id,
        dataset.version,
        parent_number,
        diff["added"]["count"],
        diff["removed"]["count"],
    )
    return dataset


def _link_or_copy(source: Path, target: Path) -> None:
    """The new version's copy of an image file: a hard link (no second copy on disk) where the
    file system allows it."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _existing_images(
    parent: Dataset, *, remove: frozenset[str], images_dir: Path
) -> tuple[list[IngestImage], list[dict[str, Any]]]:
    """The parent version's images (linked into the new version's folder) but those in
    `remove`, and the manifest entries of the removed ones."""
    manifest = load_manifest(parent.id)
    kept_items = [item for item in manifest["images"] if item["sha256"] not in remove]
    folder = local_images(parent.id, kept_items)
    present = {item["sha256"] for item in manifest["images"]}
    if unknown := sorted(remove - present):
        raise BadRequestError(
            f"cannot remove images the dataset does not have: {', '.join(unknown[:20])}"
        )
    kept: list[IngestImage] = []
    removed: list[dict[str, Any]] = []
    for item in manifest["images"]:
        if item["sha256"] in remove:
            removed.append(item)
            continue
        _link_or_copy(folder / item["file"], images_dir / item["sha256"][:2] / item["sha256"])
        kept.append(
            IngestImage(
                sha256=item["sha256"],
                split=item["split"],
                labels=tuple(item_labels(item)),
                source=item.get("source", item["file"]),
                width=item["width"],
                height=item["height"],
                source_format=item.get("format", "unknown"),
                existing=True,
            )
        )
    return kept, removed


def _count_by_split_and_class(entries: list[tuple[str | None, str]]) -> dict[str, Any]:
    by_class = Counter(label for _, label in entries)
    by_split: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, label), count in sorted(Counter(entries).items(), key=str):
        by_split[str(split)][label] = count
    return {
        "count": len(entries),
        "per_class": dict(sorted(by_class.items())),
        "per_split": dict(by_split),
    }


def _version_diff(
    parent: Dataset, images: list[IngestImage], removed: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the new version changed: images added and removed, per class and per split."""
    added = [
        (i.split, LABEL_SEPARATOR.join(i.labels) or NEGATIVE_LABEL)
        for i in images
        if not i.existing
    ]
    return {
        "parent_id": str(parent.id),
        "parent_version": parent.version,
        "added": _count_by_split_and_class(added),
        "removed": _count_by_split_and_class(
            [(r["split"], LABEL_SEPARATOR.join(item_labels(r)) or NEGATIVE_LABEL) for r in removed]
        ),
    }


def _parent_deleted(version: int) -> NotFoundError:
    return NotFoundError(
        f"version {version} of the dataset was deleted while the new version was being made"
    )
