"""Datasets: ingest an uploaded zip of class folders into validated, deduplicated, split images."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import statistics
import uuid
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.errors import BadRequestError, ConflictError, NotFoundError, PayloadTooLargeError
from app.db.locks import dataset_lineage_key, lock_key, owner_jobs_key
from app.db.models import Dataset, DatasetStatus, JobStatus, TrainingJob
from app.ml.images import ImageDecodeError, decode_image
from app.services.archive import (
    ArchiveLimits,
    ArchiveMember,
    EntryTooLargeError,
    is_junk,
    list_members,
    open_zip,
    read_member,
)
from app.services.auth import Principal, visible
from app.services.storage import get_storage, owner_key, trim_cache
from models_store import ObjectNotFoundError, file_sha256

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_FOLDER_NAMES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "test": "test",
}
MANIFEST_NAME = "manifest.json"
MIN_IMAGES_PER_CLASS = 10
# A class name is stored in columns this wide (a review item's label and top label).
MAX_CLASS_NAME_CHARS = 200
MAX_IMBALANCE = 3.0
TINY_IMAGE_SIDE = 32
MAX_LISTED = 500  # skipped/duplicate lists in a response are cut to this many entries


@dataclass(frozen=True)
class IngestOptions:
    name: str
    validation_fraction: float
    test_fraction: float
    seed: int
    owner: str | None = None


@dataclass(frozen=True)
class _Candidate:
    member: ArchiveMember
    split: str | None  # None: class-folder layout, split later
    label: str


@dataclass
class _Image:
    sha256: str
    split: str | None
    label: str
    source: str
    width: int
    height: int
    source_format: str
    # Already in the version a new version is made from: it keeps its split and class.
    existing: bool = False


@dataclass
class _Report:
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    leakage: list[dict[str, str]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _plan(
    members: list[ArchiveMember],
    report: _Report,
    *,
    known_classes: frozenset[str] = frozenset(),
) -> tuple[list[_Candidate], bool]:
    """Assign each file a split (or None) and a class from the folder layout.
    Returns the candidates and whether the zip came with split folders.

    `known_classes`: the classes of the dataset a zip adds images to. Such a zip may hold one
    class only, and need not repeat every class in every split."""
    adding = bool(known_classes)
    files = [m for m in members if not is_junk(m.parts)]
    if not files:
        raise BadRequestError("the zip holds no files (besides system junk)")
    paths = [m.parts for m in files]
    # One enclosing folder (e.g. "my_photos/cats/1.jpg") is dropped, unless it is a split
    # folder or a class the dataset has (a zip adding images of one class).
    tops = {p[0] for p in paths}
    if len(tops) == 1 and all(len(p) > 1 for p in paths):
        (top,) = tops
        if top.lower() not in SPLIT_FOLDER_NAMES and top not in known_classes:
            paths = [p[1:] for p in paths]

    has_splits = any(p[0].lower() in SPLIT_FOLDER_NAMES and len(p) > 2 for p in paths)
    candidates: list[_Candidate] = []
    for member, parts in zip(files, paths, strict=True):
        if has_splits:
            split = SPLIT_FOLDER_NAMES.get(parts[0].lower())
            if split is None:
                raise BadRequestError(
                    f"{member.path!r} is outside the split folders: with train/ and "
                    "validation/ (or val/, test/) every image must be in split/class/"
                )
            if len(parts) < 3:
                report.skipped.append({"file": member.path, "reason": "not inside a class folder"})
                continue
            candidates.append(_Candidate(member=member, split=split, label=parts[1]))
        else:
            if len(parts) < 2:
                report.skipped.append({"file": member.path, "reason": "not inside a class folder"})
                continue
            candidates.append(_Candidate(member=member, split=None, label=parts[0]))
    if has_splits and not adding:
        _check_split_classes(candidates)
    labels = {c.label for c in candidates}
    if too_long := sorted(label for label in labels if len(label) > MAX_CLASS_NAME_CHARS):
        raise BadRequestError(
            f"class folder names are at most {MAX_CLASS_NAME_CHARS} characters; "
            f"{len(too_long)} are longer, e.g. {too_long[0][:60]!r}... ({len(too_long[0])})"
        )
    if adding:
        if not labels:
            raise BadRequestError("the zip holds no images inside class folders")
    else:
        require_two_classes(labels, what="the zip")
    return candidates, has_splits


MIN_CLASSES = 2


def require_two_classes(classes: Collection[str], *, what: str) -> None:
    """The one rule for uploads and new versions alike: a classifier needs images of at least
    two classes (a version that removes every image of all classes but one is refused as an
    upload of one class folder is)."""
    if len(classes) < MIN_CLASSES:
        found = f" ({', '.join(sorted(classes))})" if classes else ""
        raise BadRequestError(
            f"a dataset needs images of at least {MIN_CLASSES} classes; {what} has "
            f"{len(classes)}{found}"
        )


def _check_split_classes(candidates: list[_Candidate]) -> None:
    by_split: dict[str, set[str]] = defaultdict(set)
    for candidate in candidates:
        assert candidate.split is not None
        by_split[candidate.split].add(candidate.label)
    if "train" not in by_split:
        raise BadRequestError("split folders were found, but no train/ folder")
    train = by_split["train"]
    problems = []
    for split in ("validation", "test"):
        if split not in by_split:
            continue
        if missing := sorted(train - by_split[split]):
            problems.append(f"{split}/ lacks {', '.join(missing)}")
        if extra := sorted(by_split[split] - train):
            problems.append(f"{split}/ has {', '.join(extra)}, which train/ lacks")
    if problems:
        raise BadRequestError("classes must agree across splits: " + "; ".join(problems))


def _decode_and_store(
    archive: zipfile.ZipFile,
    candidates: list[_Candidate],
    *,
    images_dir: Path,
    settings: Settings,
    report: _Report,
) -> list[_Image]:
    images: list[_Image] = []
    for candidate in candidates:
        source = candidate.member.path
        try:
            data = read_member(archive, candidate.member, max_bytes=settings.max_image_file_bytes)
            image = _store_image(
                data, split=candidate.split, label=candidate.label, source=source,
                images_dir=images_dir, settings=settings,
            )  # fmt: skip
        except EntryTooLargeError as exc:
            report.skipped.append({"file": source, "reason": f"file too large: {exc}"})
            continue
        except ImageDecodeError as exc:
            report.skipped.append({"file": source, "reason": str(exc)})
            continue
        except zipfile.BadZipFile as exc:
            report.skipped.append({"file": source, "reason": f"damaged zip entry ({exc})"})
            continue
        images.append(image)
    return images


def _store_image(
    data: bytes, *, split: str | None, label: str, source: str, images_dir: Path,
    settings: Settings,
) -> _Image:  # fmt: skip
    """Decode one image (ImageDecodeError if it does not) and store its file by its sha256."""
    decoded = decode_image(data, max_pixels=settings.max_image_pixels)
    digest = hashlib.sha256(data).hexdigest()
    target = images_dir / digest[:2] / digest
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return _Image(
        sha256=digest, split=split, label=label, source=source, width=decoded.width,
        height=decoded.height, source_format=decoded.source_format,
    )  # fmt: skip


def _deduplicate(images: list[_Image], report: _Report) -> list[_Image]:
    """Keep one copy of each file: drop label conflicts, keep cross-split copies in the
    earliest split (train, then validation, then test) and report them as leakage.

    An image already in the dataset (`existing`, when a version is made) always stays where
    it is, with its class: a new copy of it is a duplicate, or leakage when it came in another
    split's folder, and a new copy under another class is the conflict that is dropped."""
    by_hash: dict[str, list[_Image]] = defaultdict(list)
    for image in images:
        by_hash[image.sha256].append(image)
    rank = {None: 0, "train": 0, "validation": 1, "test": 2}
    kept: list[_Image] = []
    for digest, copies in by_hash.items():
        labels = sorted({c.label for c in copies})
        if len(labels) > 1:
            report.conflicts.append(
                {"sha256": digest, "files": [c.source for c in copies], "labels": labels}
            )
            kept.extend(c for c in copies if c.existing)
            continue
        copies.sort(key=lambda c: (not c.existing, rank[c.split], c.source))
        keeper = copies[0]
        kept.append(keeper)
        for copy in copies[1:]:
            # A new image without a split folder was never in a split: it is a plain duplicate.
            if copy.split == keeper.split or copy.split is None:
                report.duplicates.append({"file": copy.source, "duplicate_of": keeper.source})
            else:
                report.leakage.append(
                    {
                        "file": copy.source,
                        "duplicate_of": keeper.source,
                        "kept_in": str(keeper.split),
                        "removed_from": str(copy.split),
                    }
                )
    if report.conflicts:
        report.warnings.append(
            f"{len(report.conflicts)} image(s) appeared under different classes and were dropped"
        )
    return kept


def _split_counts(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 3:
        return 0
    return max(1, round(n * fraction))


def _assign_splits(
    images: list[_Image], *, validation_fraction: float, test_fraction: float, seed: int
) -> None:
    """Stratified, seeded split of the images that have no split yet (class-folder layout),
    or of train into train + validation when validation/ was missing."""
    by_label: dict[str, list[_Image]] = defaultdict(list)
    for image in images:
        by_label[image.label].append(image)
    for label in sorted(by_label):
        # Sorting by content hash first makes the split independent of the zip's file order.
        members = sorted(by_label[label], key=lambda i: i.sha256)
        random.Random(f"{seed}:{label}").shuffle(members)  # noqa: S311  (a split, not a secret)
        n_test = _split_counts(len(members), test_fraction)
        n_validation = _split_counts(len(members) - n_test, validation_fraction)
        for index, image in enumerate(members):
            if index < n_test:
                image.split = "test"
            elif index < n_test + n_validation:
                image.split = "validation"
            else:
                image.split = "train"


def _statistics(images: list[_Image], classes: list[str], report: _Report) -> dict[str, Any]:
    widths = [i.width for i in images]
    heights = [i.height for i in images]
    train_counts = Counter(i.label for i in images if i.split == "train")
    for label in classes:
        if train_counts[label] < MIN_IMAGES_PER_CLASS:
            report.warnings.append(
                f"class {label!r} has only {train_counts[label]} training images "
                f"(fewer than {MIN_IMAGES_PER_CLASS}); expect unstable results"
            )
    smallest, largest = min(train_counts.values()), max(train_counts.values())
    if smallest and largest / smallest > MAX_IMBALANCE:
        report.warnings.append(
            f"classes are imbalanced ({largest}:{smallest} training images, worse than "
            f"1:{MAX_IMBALANCE:g}); consider class_weight='auto'"
        )
    tiny = sum(1 for i in images if min(i.width, i.height) < TINY_IMAGE_SIDE)
    if tiny:
        report.warnings.append(f"{tiny} image(s) are smaller than {TINY_IMAGE_SIDE} px on a side")

    def spread(values: list[int]) -> dict[str, float]:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "image_count": len(images),
        "image_sizes": {"width": spread(widths), "height": spread(heights)},
        "formats": dict(Counter(i.source_format for i in images)),
        "skipped_count": len(report.skipped),
        "skipped": report.skipped[:MAX_LISTED],
        "duplicates_removed": len(report.duplicates),
        "duplicates": report.duplicates[:MAX_LISTED],
        "leakage": report.leakage[:MAX_LISTED],
        "label_conflicts": report.conflicts[:MAX_LISTED],
        "warnings": report.warnings,
    }


def _fingerprint(images: list[_Image]) -> str:
    lines = sorted(f"{i.split}\t{i.label}\t{i.sha256}\n" for i in images)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def ingest_zip(
    session: Session,
    *,
    zip_path: Path,
    options: IngestOptions,
    settings: Settings,
) -> Dataset:
    """Validate, decode, deduplicate and split the images of an uploaded zip into a new Dataset.
    Everything is written under a temporary folder first; on any error nothing remains."""
    dataset_id = uuid.uuid4()
    incoming = get_storage().datasets.staging_folder()
    report = _Report()
    try:
        with open_zip(zip_path, max_entries=settings.max_zip_entries) as archive:
            candidates, has_splits = _plan(_members(archive, settings), report)
            class_count = len({c.label for c in candidates})
            if class_count > settings.max_dataset_classes:
                raise PayloadTooLargeError(
                    f"the zip has {class_count} class folders; a dataset may have at most "
                    f"{settings.max_dataset_classes}"
                )
            _check_image_count(candidates, settings)
            images = _decode_and_store(
                archive, candidates, images_dir=incoming / "images", settings=settings,
                report=report,
            )  # fmt: skip
        images = _deduplicate(images, report)
        classes = sorted({c.label for c in candidates})
        _require_images_per_class(images, classes)
        if not has_splits:
            _assign_splits(
                images,
                validation_fraction=options.validation_fraction,
                test_fraction=options.test_fraction,
                seed=options.seed,
            )
        elif not any(i.split == "validation" for i in images):
            train = [i for i in images if i.split == "train"]
            _assign_splits(
                train,
                validation_fraction=options.validation_fraction,
                test_fraction=0.0,
                seed=options.seed,
            )
            report.warnings.append(
                f"no validation/ folder: {options.validation_fraction:.0%} of train/ per "
                "class was held out as validation"
            )
        split_counts = _split_counts_of(images, classes)
        stats = _statistics(images, classes, report)
        _write_manifest(incoming, images, classes)
        dataset = Dataset(
            id=dataset_id,
            owner=options.owner,
            name=options.name,
            lineage_id=dataset_id,
            version=1,
            fingerprint=_fingerprint(images),
            status=DatasetStatus.READY.value,
            class_names=classes,
            split_counts=split_counts,
            stats=stats,
        )
        session.add(dataset)
        session.flush()
        _publish(session, incoming=incoming, dataset_id=dataset_id)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    logger.info("dataset %s ingested: %d images, %d classes", dataset_id, len(images), len(classes))
    return dataset


def _members(archive: zipfile.ZipFile, settings: Settings) -> list[ArchiveMember]:
    """The zip's files, every entry checked against the archive limits first."""
    limits = ArchiveLimits(
        max_entries=settings.max_zip_entries,
        max_total_bytes=settings.max_uncompressed_bytes,
        max_ratio=settings.max_compression_ratio,
    )
    return list_members(archive, limits)


def _check_image_count(candidates: list[_Candidate], settings: Settings) -> None:
    if len(candidates) > settings.max_dataset_images:
        raise PayloadTooLargeError(
            f"the zip holds {len(candidates)} images; a dataset may have at most "
            f"{settings.max_dataset_images}"
        )


def _split_counts_of(images: list[_Image], classes: list[str]) -> dict[str, dict[str, int]]:
    """{split: {class: images}} for every split that has images."""
    counted = Counter((i.split, i.label) for i in images)
    return {
        split: {label: counted[(split, label)] for label in classes}
        for split in SPLITS
        if any(s == split for s, _ in counted)
    }


def _publish(session: Session, *, incoming: Path, dataset_id: uuid.UUID) -> None:
    """Publish a new dataset's folder (its images, then its manifest: a dataset without a
    manifest does not exist), then commit its row (before the client hears 201: a dataset it
    was told exists, does); if the commit fails the files go again. (The caller removes
    `incoming` on any error before this.)"""
    store = get_storage().datasets
    store.publish_folder(incoming, str(dataset_id), commit_file=MANIFEST_NAME)
    try:
        session.commit()
    except BaseException:
        _remove_files(dataset_id)
        raise


def _remove_files(dataset_id: uuid.UUID) -> None:
    store = get_storage().datasets
    store.delete(f"{dataset_id}/{MANIFEST_NAME}")  # first: the dataset stops existing at once
    store.delete_prefix(f"{dataset_id}/")


def _require_images_per_class(images: list[_Image], classes: list[str]) -> None:
    counts = Counter(i.label for i in images if i.split in (None, "train"))
    if empty := [label for label in classes if counts[label] == 0]:
        raise BadRequestError(
            f"no valid training images left in class(es) {', '.join(empty)} "
            "(see the skipped files for reasons)"
        )


def _write_manifest(folder: Path, images: list[_Image], classes: list[str]) -> None:
    items = [
        {
            "split": i.split,
            "label": i.label,
            "sha256": i.sha256,
            "file": f"images/{i.sha256[:2]}/{i.sha256}",
            "width": i.width,
            "height": i.height,
            "format": i.source_format,
            "source": i.source,
        }
        for i in sorted(images, key=lambda i: (SPLITS.index(str(i.split)), i.label, i.sha256))
    ]
    (folder / MANIFEST_NAME).write_text(json.dumps({"classes": classes, "images": items}))


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


def get_dataset(session: Session, *, dataset_id: uuid.UUID, principal: Principal | None) -> Dataset:
    """The dataset with this id if the caller may see it, or NotFoundError."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or (principal is not None and not principal.can_see(dataset.owner)):
        raise NotFoundError(f"dataset {dataset_id} not found")
    return dataset


def list_datasets(
    session: Session, *, principal: Principal, limit: int, offset: int
) -> list[Dataset]:
    """The caller's datasets (every dataset for an admin), newest first."""
    query = visible(select(Dataset), Dataset.owner, principal)
    query = query.order_by(Dataset.created_at.desc()).limit(limit).offset(offset)
    return list(session.scalars(query))


def delete_dataset(session: Session, *, dataset: Dataset, settings: Settings) -> None:
    """Remove the dataset's rows (committed) and then its files; refuse while a job on it is
    queued or running. Finished jobs stay, detached from the dataset, so their history and
    models survive."""
    # Under the owner's jobs lock: a job submitted at the same moment either exists (and this
    # is a 409) or waits and then finds the dataset gone (404). Under the lineage's lock: a
    # version being made from this one either commits first (it has its own copy of every
    # image) or finds its parent gone (404).
    lock_key(session, owner_jobs_key(dataset.owner))
    lock_key(session, dataset_lineage_key(dataset.lineage_id))
    if session.scalar(select(Dataset.id).where(Dataset.id == dataset.id)) is None:
        raise NotFoundError(f"dataset {dataset.id} not found")  # deleted meanwhile
    active = session.scalar(
        select(TrainingJob.id).where(
            TrainingJob.dataset_id == dataset.id,
            TrainingJob.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
        )
    )
    if active is not None:
        raise ConflictError(f"dataset {dataset.id} is in use by job {active}; cancel it first")
    session.execute(
        update(TrainingJob).where(TrainingJob.dataset_id == dataset.id).values(dataset_id=None)
    )
    # Its cached features go too, unless another dataset of the owner has the same images
    # (the cache is per owner and keyed by content).
    shares_features = session.scalar(
        select(Dataset.id).where(
            Dataset.owner == dataset.owner,
            Dataset.fingerprint == dataset.fingerprint,
            Dataset.id != dataset.id,
        )
    )
    session.delete(dataset)
    session.commit()  # the files go only once the rows are gone for good
    _remove_files(dataset.id)
    if dataset.fingerprint and shares_features is None:
        remove_features(owner=dataset.owner, fingerprint=dataset.fingerprint)


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


# --- Versions: a dataset's images are never changed in place; a change makes a new version.


@dataclass(frozen=True)
class LabeledImage:
    """An image to add to a dataset under a class (a labeled review item)."""

    read: Callable[[], bytes]
    label: str
    source: str


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
    parent: Dataset, *, remove: frozenset[str], images_dir: Path, settings: Settings
) -> tuple[list[_Image], list[dict[str, Any]]]:
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
    kept: list[_Image] = []
    removed: list[dict[str, Any]] = []
    for item in manifest["images"]:
        if item["sha256"] in remove:
            removed.append(item)
            continue
        _link_or_copy(folder / item["file"], images_dir / item["sha256"][:2] / item["sha256"])
        kept.append(
            _Image(
                sha256=item["sha256"], split=item["split"], label=item["label"],
                source=item.get("source", item["file"]), width=item["width"],
                height=item["height"], source_format=item.get("format", "unknown"),
                existing=True,
            )
        )  # fmt: skip
    return kept, removed


def _labeled_images(
    labeled: Sequence[LabeledImage], *, images_dir: Path, settings: Settings, report: _Report
) -> list[_Image]:
    images = []
    for entry in labeled:
        try:
            data = entry.read()
            images.append(
                _store_image(
                    data,
                    split=None,
                    label=entry.label,
                    source=entry.source,
                    images_dir=images_dir,
                    settings=settings,
                )
            )
        except ObjectNotFoundError:
            report.skipped.append({"file": entry.source, "reason": "the image file is gone"})
        except ImageDecodeError as exc:
            report.skipped.append({"file": entry.source, "reason": str(exc)})
    return images


def _zip_images(
    zip_path: Path, *, parent: Dataset, images_dir: Path, settings: Settings, report: _Report
) -> list[_Image]:
    with open_zip(zip_path, max_entries=settings.max_zip_entries) as archive:
        candidates, _ = _plan(
            _members(archive, settings), report, known_classes=frozenset(parent.class_names)
        )
        _check_image_count(candidates, settings)
        return _decode_and_store(
            archive, candidates, images_dir=images_dir, settings=settings, report=report
        )


def _count_by_split_and_class(entries: list[tuple[str | None, str]]) -> dict[str, Any]:
    by_class = Counter(label for _, label in entries)
    by_split: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, label), count in sorted(Counter(entries).items(), key=str):
        by_split[str(split)][label] = count
    return {"count": len(entries), "per_class": dict(sorted(by_class.items())),
            "per_split": dict(by_split)}  # fmt: skip


def _version_diff(
    parent: Dataset, images: list[_Image], removed: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the new version changed: images added and removed, per class and per split."""
    added = [(i.split, i.label) for i in images if not i.existing]
    return {
        "parent_id": str(parent.id),
        "parent_version": parent.version,
        "added": _count_by_split_and_class(added),
        "removed": _count_by_split_and_class([(r["split"], r["label"]) for r in removed]),
    }


def _parent_deleted(version: int) -> NotFoundError:
    return NotFoundError(
        f"version {version} of the dataset was deleted while the new version was being made"
    )


def add_version(
    session: Session,
    *,
    dataset_id: uuid.UUID,
    principal: Principal,
    options: VersionOptions,
    settings: Settings,
    zip_path: Path | None = None,
    labeled: Sequence[LabeledImage] = (),
    before_commit: Callable[[Session], None] = lambda session: None,
) -> Dataset:
    """A new version of a dataset: its parent's images minus `options.remove`, plus the images
    of a zip of class folders and/or labeled image files, deduplicated and checked for leakage
    against the parent's splits as an upload is (images already in the dataset keep their
    split and class). New images without split folders are split like an upload's. The new
    version has its own folder, manifest and fingerprint; its parent stays as it was.

    The work is done before any lock is taken; then, under the lineage's lock, the version
    is numbered (ConflictError if another one was added from the same parent meanwhile),
    `before_commit(session)` runs (it may refuse), and everything is committed together."""
    parent = resolve_dataset_version(
        session, dataset_id=dataset_id, version=options.parent_version, principal=principal
    )
    parent_id, lineage_id, parent_number = parent.id, parent.lineage_id, parent.version
    new_id = uuid.uuid4()
    incoming = get_storage().datasets.staging_folder()
    images_dir = incoming / "images"
    report = _Report()
    try:
        try:
            existing, removed = _existing_images(
                parent, remove=options.remove, images_dir=images_dir, settings=settings
            )
        except (FileNotFoundError, ObjectNotFoundError):
            # Its files went while they were being linked: deleted at this very moment.
            raise _parent_deleted(parent_number) from None
        new: list[_Image] = []
        if zip_path is not None:
            new += _zip_images(
                zip_path, parent=parent, images_dir=images_dir, settings=settings, report=report
            )
        new += _labeled_images(labeled, images_dir=images_dir, settings=settings, report=report)
        images = _deduplicate(existing + new, report)
        classes = sorted({i.label for i in images})
        require_two_classes(classes, what="the new version")
        if len(classes) > settings.max_dataset_classes:
            raise PayloadTooLargeError(
                f"the new version would have {len(classes)} classes; a dataset may have at "
                f"most {settings.max_dataset_classes}"
            )
        if len(images) > settings.max_dataset_images:
            raise PayloadTooLargeError(
                f"the new version would hold {len(images)} images; a dataset may have at most "
                f"{settings.max_dataset_images}"
            )
        _require_images_per_class(images, classes)
        _assign_splits(
            [i for i in images if i.split is None],
            validation_fraction=options.validation_fraction,
            test_fraction=options.test_fraction,
            seed=options.seed,
        )
        diff = _version_diff(parent, images, removed)
        if not diff["added"]["count"] and not diff["removed"]["count"]:
            raise BadRequestError(
                "the new version would equal version "
                f"{parent_number}: no image was added ({len(report.duplicates)} already in "
                f"it, {len(report.leakage)} in another split, {len(report.conflicts)} under "
                f"another class, {len(report.skipped)} skipped) and none removed"
            )
        split_counts = _split_counts_of(images, classes)
        stats = _statistics(images, classes, report)
        _write_manifest(incoming, images, classes)

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
        dataset = Dataset(
            id=new_id, owner=parent.owner, name=parent.name, lineage_id=lineage_id,
            version=(latest or 0) + 1, parent_id=parent_id, diff=diff,
            fingerprint=_fingerprint(images), status=DatasetStatus.READY.value,
            class_names=classes, split_counts=split_counts, stats=stats,
        )  # fmt: skip
        session.add(dataset)
        session.flush()
        before_commit(session)
        _publish(session, incoming=incoming, dataset_id=new_id)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    logger.info(
        "dataset %s v%d made from v%d: %d added, %d removed", lineage_id, dataset.version,
        parent_number, diff["added"]["count"], diff["removed"]["count"],
    )  # fmt: skip
    return dataset
