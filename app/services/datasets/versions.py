"""Dataset versions: a dataset's images never change in place; a change makes a new version
(the next number of its lineage) with its own folder, manifest and fingerprint."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
from app.services.datasets.ingest import (
    Built,
    Ingest,
    IngestImage,
    LabeledImage,
    SplitOptions,
)
from app.services.datasets.label_lists import LABEL_SEPARATOR
from models_store import ObjectNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionOptions:
    """How the images of a new version are split (those that come without split folders),
    which images of the parent it leaves out (by sha256), which of its images get new labels
    (sha256 -> labels: a labeled image keeps its split, an unlabeled one is split like a new
    image), and which version it is made from (default: the latest)."""

    validation_fraction: float
    test_fraction: float
    seed: int
    remove: frozenset[str] = frozenset()
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
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
            parents = _existing_images(parent, options=options, images_dir=ingest.images_dir)
        except (FileNotFoundError, ObjectNotFoundError):
            # Its files went while they were being linked: deleted at this very moment.
            raise _parent_deleted(parent_number) from None
        removed = parents.removed
        ingest.add_existing(parents.labeled)
        ingest.add_existing_unlabeled(parents.unlabeled)
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
        diff = _version_diff(parent, built, removed, parents=parents)
        changed = (
            diff["added"]["count"]
            or diff["removed"]["count"]
            or diff["relabeled"]
            or diff["unlabeled_added"]
            or diff["unlabeled_removed"]
        )
        if not changed:
            report = built.report
            raise BadRequestError(
                "the new version would equal version "
                f"{parent_number}: no image was added ({len(report.duplicates)} already in "
                f"it, {len(report.leakage)} in another split, {len(report.conflicts)} under "
                f"another class, {len(report.skipped)} skipped), labeled or removed"
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


@dataclass(frozen=True)
class _ParentImages:
    """What a new version takes of its parent: labeled images (some relabeled), unlabeled
    images (those still without a label), and the manifest entries it leaves out."""

    labeled: list[IngestImage]
    unlabeled: list[IngestImage]
    removed: list[dict[str, Any]]
    relabeled: int  # labeled images given other labels
    newly_labeled: int  # unlabeled images given labels
    unlabeled_removed: int


def _existing_images(
    parent: Dataset, *, options: VersionOptions, images_dir: Path
) -> _ParentImages:
    """The parent version's images (linked into the new version's folder) but those in
    `options.remove`, with `options.labels` applied, and the manifest entries of the removed."""
    manifest = load_manifest(parent.id)
    waiting = manifest.get("unlabeled", [])
    every = [*manifest["images"], *waiting]
    present = {item["sha256"] for item in every}
    named = options.remove | set(options.labels)
    if unknown := sorted(named - present):
        raise BadRequestError(
            f"the dataset has no image {', '.join(unknown[:20])}"
            + (f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else "")
        )
    if both := sorted(options.remove & set(options.labels)):
        raise BadRequestError(f"images both removed and labeled: {', '.join(both[:20])}")
    _check_labels(options.labels, classes=parent.class_names, task=Task(parent.task))
    kept_items = [item for item in every if item["sha256"] not in options.remove]
    folder = local_images(parent.id, kept_items)
    labeled: list[IngestImage] = []
    unlabeled: list[IngestImage] = []
    removed: list[dict[str, Any]] = []
    relabeled = newly_labeled = unlabeled_removed = 0
    is_waiting = {item["sha256"] for item in waiting}
    for item in every:
        digest = item["sha256"]
        if digest in options.remove:
            if digest in is_waiting:
                unlabeled_removed += 1
            else:
                removed.append(item)
            continue
        _link_or_copy(folder / item["file"], images_dir / digest[:2] / digest)
        new_labels = options.labels.get(digest)
        was_waiting = digest in is_waiting
        if was_waiting and new_labels is None:
            unlabeled.append(_ingest_image(item, split=None, labels=(), existing=True))
            continue
        labels = tuple(item_labels(item)) if new_labels is None else new_labels
        if new_labels is not None and not was_waiting and labels != tuple(item_labels(item)):
            relabeled += 1
        newly_labeled += was_waiting
        labeled.append(
            _ingest_image(
                item,
                # a newly labeled image is split like a new one; a relabeled one stays put
                split=None if was_waiting else item["split"],
                labels=labels,
                existing=not was_waiting,
            )
        )
    return _ParentImages(labeled, unlabeled, removed, relabeled, newly_labeled, unlabeled_removed)


def _ingest_image(
    item: dict[str, Any], *, split: str | None, labels: tuple[str, ...], existing: bool
) -> IngestImage:
    return IngestImage(
        sha256=item["sha256"],
        split=split,
        labels=labels,
        source=item.get("source", item["file"]),
        width=item["width"],
        height=item["height"],
        source_format=item.get("format", "unknown"),
        existing=existing,
    )


def _check_labels(
    labels: Mapping[str, tuple[str, ...]], *, classes: Sequence[str], task: Task
) -> None:
    """Labels name classes of the dataset: one per image in a multiclass dataset, any number
    (none: a negative example) in a multi-label one."""
    known = set(classes)
    for digest, given in labels.items():
        if unknown := [label for label in given if label not in known]:
            raise BadRequestError(
                f"{unknown[0]!r} (image {digest}) is not a class of the dataset: one of "
                f"{', '.join(list(classes)[:50])}"
            )
        if task is Task.MULTICLASS and len(given) != 1:
            raise BadRequestError(
                f"image {digest} is given {len(given)} labels: an image of a multiclass "
                "dataset has exactly one"
            )


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
    parent: Dataset, built: Built, removed: list[dict[str, Any]], *, parents: _ParentImages
) -> dict[str, Any]:
    """What the new version changed: images added (newly labeled ones too) and removed, per
    class and per split; labeled images relabeled; unlabeled images added and labeled."""
    added = [
        (i.split, LABEL_SEPARATOR.join(i.labels) or NEGATIVE_LABEL)
        for i in built.images
        if not i.existing
    ]
    return {
        "parent_id": str(parent.id),
        "parent_version": parent.version,
        "added": _count_by_split_and_class(added),
        "removed": _count_by_split_and_class(
            [(r["split"], LABEL_SEPARATOR.join(item_labels(r)) or NEGATIVE_LABEL) for r in removed]
        ),
        "relabeled": parents.relabeled,
        "labeled": parents.newly_labeled,
        "unlabeled_added": sum(1 for i in built.unlabeled if not i.existing),
        "unlabeled_removed": parents.unlabeled_removed,
        "unlabeled": len(built.unlabeled),
    }


def _parent_deleted(version: int) -> NotFoundError:
    return NotFoundError(
        f"version {version} of the dataset was deleted while the new version was being made"
    )
