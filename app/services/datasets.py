"""Datasets: ingest an uploaded zip of class folders into validated, deduplicated, split images."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import statistics
import uuid
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import BadRequestError, ConflictError, NotFoundError, PayloadTooLargeError
from app.db.locks import lock_key, owner_jobs_key
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


@dataclass
class _Report:
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    leakage: list[dict[str, str]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _plan(members: list[ArchiveMember], report: _Report) -> tuple[list[_Candidate], bool]:
    """Assign each file a split (or None) and a class from the folder layout.
    Returns the candidates and whether the zip came with split folders."""
    files = [m for m in members if not is_junk(m.parts)]
    if not files:
        raise BadRequestError("the zip holds no files (besides system junk)")
    paths = [m.parts for m in files]
    # One enclosing folder (e.g. "my_photos/cats/1.jpg") is dropped, unless it is a split folder.
    tops = {p[0] for p in paths}
    if len(tops) == 1 and all(len(p) > 1 for p in paths):
        (top,) = tops
        if top.lower() not in SPLIT_FOLDER_NAMES:
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
    if has_splits:
        _check_split_classes(candidates)
    labels = {c.label for c in candidates}
    if len(labels) < 2:
        found = ", ".join(sorted(labels)) or "none"
        raise BadRequestError(f"a dataset needs at least 2 class folders; found {found}")
    return candidates, has_splits


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
            decoded = decode_image(data, max_pixels=settings.max_image_pixels)
        except EntryTooLargeError as exc:
            report.skipped.append({"file": source, "reason": f"file too large: {exc}"})
            continue
        except ImageDecodeError as exc:
            report.skipped.append({"file": source, "reason": str(exc)})
            continue
        except zipfile.BadZipFile as exc:
            report.skipped.append({"file": source, "reason": f"damaged zip entry ({exc})"})
            continue
        digest = hashlib.sha256(data).hexdigest()
        target = images_dir / digest[:2] / digest
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        images.append(
            _Image(
                sha256=digest,
                split=candidate.split,
                label=candidate.label,
                source=source,
                width=decoded.width,
                height=decoded.height,
                source_format=decoded.source_format,
            )
        )
    return images


def _deduplicate(images: list[_Image], report: _Report) -> list[_Image]:
    """Keep one copy of each file: drop label conflicts, keep cross-split copies in the
    earliest split (train, then validation, then test) and report them as leakage."""
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
            continue
        copies.sort(key=lambda c: (rank[c.split], c.source))
        keeper = copies[0]
        kept.append(keeper)
        for copy in copies[1:]:
            if copy.split == keeper.split:
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
    incoming = settings.datasets_dir / ".incoming" / str(dataset_id)
    final = settings.datasets_dir / str(dataset_id)
    report = _Report()
    try:
        incoming.mkdir(parents=True)
        with open_zip(zip_path, max_entries=settings.max_zip_entries) as archive:
            limits = ArchiveLimits(
                max_entries=settings.max_zip_entries,
                max_total_bytes=settings.max_uncompressed_bytes,
                max_ratio=settings.max_compression_ratio,
            )
            candidates, has_splits = _plan(list_members(archive, limits), report)
            class_count = len({c.label for c in candidates})
            if class_count > settings.max_dataset_classes:
                raise PayloadTooLargeError(
                    f"the zip has {class_count} class folders; a dataset may have at most "
                    f"{settings.max_dataset_classes}"
                )
            if len(candidates) > settings.max_dataset_images:
                raise PayloadTooLargeError(
                    f"the zip holds {len(candidates)} images; a dataset may have at most "
                    f"{settings.max_dataset_images}"
                )
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
        counted = Counter((i.split, i.label) for i in images)
        split_counts = {
            split: {label: counted[(split, label)] for label in classes}
            for split in SPLITS
            if any(s == split for s, _ in counted)
        }
        stats = _statistics(images, classes, report)
        _write_manifest(incoming, images, classes)
        dataset = Dataset(
            id=dataset_id,
            owner=options.owner,
            name=options.name,
            fingerprint=_fingerprint(images),
            status=DatasetStatus.READY.value,
            class_names=classes,
            split_counts=split_counts,
            stats=stats,
        )
        session.add(dataset)
        session.flush()
        incoming.rename(final)
        try:
            # Committed here, before the client hears 201: a dataset it was told exists, does.
            session.commit()
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    logger.info("dataset %s ingested: %d images, %d classes", dataset_id, len(images), len(classes))
    return dataset


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
            "source": i.source,
        }
        for i in sorted(images, key=lambda i: (SPLITS.index(str(i.split)), i.label, i.sha256))
    ]
    (folder / MANIFEST_NAME).write_text(json.dumps({"classes": classes, "images": items}))


def dataset_folder(dataset: Dataset, *, settings: Settings) -> Path:
    """Where a dataset's manifest and images live."""
    return settings.datasets_dir / str(dataset.id)


def load_manifest(dataset: Dataset, *, settings: Settings) -> dict[str, Any]:
    """The dataset's manifest: classes and every image's split, label, file and size."""
    manifest: dict[str, Any] = json.loads(
        (dataset_folder(dataset, settings=settings) / MANIFEST_NAME).read_text()
    )
    return manifest


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
    # is a 409) or waits and then finds the dataset gone (404).
    lock_key(session, owner_jobs_key(dataset.owner))
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
    session.delete(dataset)
    session.commit()  # the files go only once the rows are gone for good
    shutil.rmtree(dataset_folder(dataset, settings=settings), ignore_errors=True)
