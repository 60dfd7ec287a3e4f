"""The ingest pipeline of a dataset version, the same for an uploaded zip and a new version:
plan (which file is which class and split) -> decode and store -> deduplicate -> check -> split
-> statistics -> manifest. No database here: it works in a staging folder, and the caller
records the result and publishes the folder.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.core.errors import BadRequestError, PayloadTooLargeError
from app.ml.config import Task
from app.ml.data import NEGATIVE_LABEL
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
from app.services.datasets.label_lists import (
    CSV_NAME,
    JSONL_NAME,
    LABEL_LIST_NAMES,
    LABEL_SEPARATOR,
    LabelList,
    NotALabelListError,
    nfc,
    parse_label_list,
)
from models_store import ObjectNotFoundError

SPLITS = ("train", "validation", "test")
SPLIT_FOLDER_NAMES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "test": "test",
}
MANIFEST_NAME = "manifest.json"
# A zip's top folder of images without labels: kept to be labeled later (suggestions), never
# trained or evaluated on until they are.
UNLABELED_FOLDER = "_unlabeled"
MIN_CLASSES = 2
MIN_IMAGES_PER_CLASS = 10
# A class name is stored in columns this wide (a review item's label and top label).
MAX_CLASS_NAME_CHARS = 200
MAX_IMBALANCE = 3.0
TINY_IMAGE_SIDE = 32
MAX_LISTED = 500  # skipped/duplicate lists in a response are cut to this many entries


@dataclass(frozen=True)
class SplitOptions:
    """How images that come without a split (no split folders) are split, per class."""

    validation_fraction: float
    test_fraction: float
    seed: int


@dataclass(frozen=True)
class LabeledImage:
    """An image to add to a dataset under a class (a labeled review item)."""

    read: Callable[[], bytes]
    label: str
    source: str


def label_key(labels: tuple[str, ...]) -> str:
    """One string for an image's labels: its class where it has one (a multiclass dataset's
    images all do, or none), NEGATIVE_LABEL where it has none, else the labels joined (a
    label has no control character, so no two label sets share a key)."""
    if not labels:
        return NEGATIVE_LABEL
    return labels[0] if len(labels) == 1 else "\n".join(labels)


@dataclass(frozen=True)
class _Candidate:
    member: ArchiveMember
    split: str | None  # None: class-folder layout, split later
    labels: tuple[str, ...]  # sorted; () for a negative example

    @property
    def label(self) -> str:
        return label_key(self.labels)


@dataclass
class IngestImage:
    sha256: str
    split: str | None
    labels: tuple[str, ...]  # sorted; () for a negative example
    source: str
    width: int
    height: int
    source_format: str
    # Already in the version a new version is made from: it keeps its split and class.
    existing: bool = False

    @property
    def label(self) -> str:
        """The image's class (NEGATIVE_LABEL: none), or the key of its several labels."""
        return label_key(self.labels)


@dataclass
class Report:
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    leakage: list[dict[str, str]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Built:
    """A dataset version's images, classes and report, its manifest written."""

    images: list[IngestImage]
    unlabeled: list[IngestImage]
    classes: list[str]
    task: Task
    split_counts: dict[str, dict[str, int]]
    stats: dict[str, Any]
    fingerprint: str
    report: Report


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


class Ingest:
    """One dataset version being made in `folder` (a staging folder): images come in (a zip,
    labeled files, the images of the version it is made from), then `finish` deduplicates,
    checks, splits and writes the manifest."""

    def __init__(
        self, folder: Path, *, settings: Settings, what: str, task: Task | None = None
    ) -> None:
        self.folder = folder
        self.settings = settings
        self.what = what  # "the zip", "the new version": how messages name it
        # None: multilabel where an image has several labels, else multiclass
        self.task = task
        self.report = Report()
        self.images: list[IngestImage] = []
        self.unlabeled: list[IngestImage] = []
        # Class folders a zip declared: each must end with training images, even if all of
        # its files were skipped (an upload's classes are its folders).
        self.declared_classes: set[str] = set()
        self.has_split_folders = False

    # --- What comes in

    def add_zip(
        self,
        zip_path: Path,
        *,
        known_classes: frozenset[str] = frozenset(),
        negative_folder: str = NEGATIVE_LABEL,
    ) -> None:
        """The images of a zip of class folders (or of split folders holding them), or of a
        zip whose labels.csv / labels.jsonl names each image's class. With `known_classes` (a
        new version's), it may hold one class only, and need not repeat every class in every
        split; without, its classes are the dataset's. Images in a folder named
        `negative_folder`, or listed without a label, are negative examples: of none of the
        classes (what the model's "unknown" answer learns from). Images in the top folder
        UNLABELED_FOLDER have no label yet."""
        adding = bool(known_classes)
        with open_zip(zip_path, max_entries=self.settings.max_zip_entries) as archive:
            every_file = _relative_files(
                _members(archive, self.settings), known_classes=known_classes
            )
            unlabeled = [(m, p) for m, p in every_file if p[0] == UNLABELED_FOLDER and len(p) > 1]
            files = [(m, p) for m, p in every_file if not (p[0] == UNLABELED_FOLDER and len(p) > 1)]
            listed = [
                (m, parts) for m, parts in files if parts[0] in LABEL_LIST_NAMES and len(parts) == 1
            ]
            if len(listed) > 1:
                raise BadRequestError(
                    f"the zip holds both {CSV_NAME} and {JSONL_NAME}: keep one of them"
                )
            label_list = self._read_label_list(archive, *listed[0]) if listed else None
            if label_list is not None:
                candidates, has_splits = _plan_listed(files, label_list, self.report)
            else:
                others = [(m, parts) for m, parts in files if not (listed and m is listed[0][0])]
                candidates, has_splits = _plan_folders(
                    others, self.report, negative_folder=negative_folder
                )
            self._check_task(candidates)
            _check_plan(candidates, has_splits=has_splits, adding=adding, unlabeled=len(unlabeled))
            labels = _classes_of(candidates)
            if not adding:
                self._check_class_count(labels)
            if len(candidates) + len(unlabeled) > self.settings.max_dataset_images:
                raise PayloadTooLargeError(
                    f"the zip holds {len(candidates) + len(unlabeled)} images; a dataset may "
                    f"have at most {self.settings.max_dataset_images}"
                )
            for candidate in candidates:
                self._add_member(archive, candidate)
            for member, _ in unlabeled:
                self._add_member(
                    archive, _Candidate(member=member, split=None, labels=()), into=self.unlabeled
                )
        if not adding:
            self.declared_classes |= labels
            self.has_split_folders = has_splits

    def _check_task(self, candidates: Sequence[_Candidate]) -> None:
        """An image with several labels makes the dataset multi-label, unless it was asked to
        be multiclass (or is: a new version keeps its parent's task)."""
        several = next((c for c in candidates if len(c.labels) > 1), None)
        if several is None:
            return
        if self.task is Task.MULTICLASS:
            raise BadRequestError(
                f"{several.member.path!r} has {len(several.labels)} labels, and "
                f"{self.what} is of a multiclass dataset (one label per image): ask for "
                "task=multilabel"
            )
        self.task = Task.MULTILABEL

    def _read_label_list(
        self, archive: zipfile.ZipFile, member: ArchiveMember, parts: tuple[str, ...]
    ) -> LabelList | None:
        """The zip's label list, or None where its labels.csv is some other CSV (then the
        folders say the classes, and the file is skipped like any file that is not an image)."""
        name = parts[0]
        try:
            data = read_member(archive, member, max_bytes=self.settings.max_label_list_bytes)
        except EntryTooLargeError as exc:
            raise PayloadTooLargeError(f"{name} is too large: {exc}") from exc
        except (zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
            raise BadRequestError(f"{name} cannot be read from the zip ({exc})") from exc
        try:
            return parse_label_list(
                name,
                data,
                max_lines=self.settings.max_zip_entries,
                max_label_chars=MAX_CLASS_NAME_CHARS,
            )
        except NotALabelListError as exc:
            self.report.skipped.append({"file": member.path, "reason": str(exc)})
            return None

    def add_labeled(self, labeled: Sequence[LabeledImage]) -> None:
        """Image files under their labels (review items), without a split."""
        for entry in labeled:
            try:
                data = entry.read()
                image = self._store(data, split=None, labels=(entry.label,), source=entry.source)
                self.images.append(image)
            except ObjectNotFoundError:
                gone = {"file": entry.source, "reason": "the image file is gone"}
                self.report.skipped.append(gone)
            except ImageDecodeError as exc:
                self.report.skipped.append({"file": entry.source, "reason": str(exc)})

    def add_existing(self, images: Sequence[IngestImage]) -> None:
        """Images the version is made from (already stored in `folder`): they keep their
        split and class."""
        self.images.extend(images)

    @property
    def images_dir(self) -> Path:
        return self.folder / "images"

    def add_existing_unlabeled(self, images: Sequence[IngestImage]) -> None:
        """Unlabeled images of the version this one is made from (stored in `folder`)."""
        self.unlabeled.extend(images)

    def _add_member(
        self,
        archive: zipfile.ZipFile,
        candidate: _Candidate,
        *,
        into: list[IngestImage] | None = None,
    ) -> None:
        source = candidate.member.path
        try:
            data = read_member(
                archive, candidate.member, max_bytes=self.settings.max_image_file_bytes
            )
            (self.images if into is None else into).append(
                self._store(data, split=candidate.split, labels=candidate.labels, source=source)
            )
        except EntryTooLargeError as exc:
            self.report.skipped.append({"file": source, "reason": f"file too large: {exc}"})
        except ImageDecodeError as exc:
            self.report.skipped.append({"file": source, "reason": str(exc)})
        except zipfile.BadZipFile as exc:
            self.report.skipped.append({"file": source, "reason": f"damaged zip entry ({exc})"})

    def _store(
        self, data: bytes, *, split: str | None, labels: tuple[str, ...], source: str
    ) -> IngestImage:
        """Decode one image (ImageDecodeError if it does not) and store its file by sha256."""
        decoded = decode_image(data, max_pixels=self.settings.max_image_pixels)
        digest = hashlib.sha256(data).hexdigest()
        target = self.images_dir / digest[:2] / digest
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return IngestImage(
            sha256=digest,
            split=split,
            labels=labels,
            source=source,
            width=decoded.width,
            height=decoded.height,
            source_format=decoded.source_format,
        )

    # --- Making the version

    def finish(self, split: SplitOptions) -> Built:
        """Deduplicate, check (two classes, training images in each, the limits), split the
        images that have no split yet, and write the manifest into the folder."""
        images = _deduplicate(self.images, self.report)
        unlabeled = _unlabeled_once(self.unlabeled, labeled=images, report=self.report)
        classes = sorted(self.declared_classes | _classes_of(images))
        task = self.task or Task.MULTICLASS
        require_two_classes(classes, what=self.what)
        self._check_class_count(classes)
        if len(images) + len(unlabeled) > self.settings.max_dataset_images:
            raise PayloadTooLargeError(
                f"{self.what} would hold {len(images) + len(unlabeled)} images; a dataset may "
                "have at most "
                f"{self.settings.max_dataset_images}"
            )
        _require_images_per_class(images, classes)
        if self.has_split_folders and not any(i.split == "validation" for i in images):
            # An upload with train/ and no validation/: validation is held out of train/.
            _assign_splits(
                [i for i in images if i.split == "train"],
                validation_fraction=split.validation_fraction,
                test_fraction=0.0,
                seed=split.seed,
                task=task,
            )
            self.report.warnings.append(
                f"no validation/ folder: {split.validation_fraction:.0%} of train/ per "
                "class was held out as validation"
            )
        else:
            _assign_splits(
                [i for i in images if i.split is None],
                validation_fraction=split.validation_fraction,
                test_fraction=split.test_fraction,
                seed=split.seed,
                task=task,
            )
        _write_manifest(self.folder, images, classes, task=task, unlabeled=unlabeled)
        return Built(
            images=images,
            unlabeled=unlabeled,
            classes=classes,
            task=task,
            split_counts=_split_counts_of(images, classes),
            stats={
                **_statistics(images, classes, self.report, task=task),
                "unlabeled_count": len(unlabeled),
            },
            fingerprint=_fingerprint(images, unlabeled),
            report=self.report,
        )

    def _check_class_count(self, classes: Collection[str]) -> None:
        if len(classes) > self.settings.max_dataset_classes:
            raise PayloadTooLargeError(
                f"{self.what} has {len(classes)} classes; a dataset may have at most "
                f"{self.settings.max_dataset_classes}"
            )


def _members(archive: zipfile.ZipFile, settings: Settings) -> list[ArchiveMember]:
    """The zip's files, every entry checked against the archive limits first."""
    limits = ArchiveLimits(
        max_entries=settings.max_zip_entries,
        max_total_bytes=settings.max_uncompressed_bytes,
        max_ratio=settings.max_compression_ratio,
    )
    return list_members(archive, limits)


# A zip's file and its path relative to the folder its classes (or label list) are in.
RelativeFile = tuple[ArchiveMember, tuple[str, ...]]


def _relative_files(
    members: list[ArchiveMember], *, known_classes: frozenset[str]
) -> list[RelativeFile]:
    """The zip's files (system junk left out) with their paths relative to the dataset's
    folder: one enclosing folder (e.g. "my_photos/cats/1.jpg") is dropped, unless it is a
    split folder or a class the dataset has (a zip adding images of one class)."""
    files = [m for m in members if not is_junk(m.parts)]
    if not files:
        raise BadRequestError("the zip holds no files (besides system junk)")
    paths = [m.parts for m in files]
    tops = {p[0] for p in paths}
    if len(tops) == 1 and all(len(p) > 1 for p in paths):
        (top,) = tops
        kept_folders = (*SPLIT_FOLDER_NAMES, UNLABELED_FOLDER)
        if top.lower() not in kept_folders and top not in known_classes:
            paths = [p[1:] for p in paths]
    return list(zip(files, paths, strict=True))


def _plan_folders(
    files: list[RelativeFile], report: Report, *, negative_folder: str
) -> tuple[list[_Candidate], bool]:
    """Assign each file a split (or None) and a class from the folder layout (the folder
    `negative_folder`: negative examples). Returns the candidates and whether the zip came
    with split folders."""

    def label(folder: str) -> tuple[str, ...]:
        return () if folder == negative_folder else (folder,)

    has_splits = any(p[0].lower() in SPLIT_FOLDER_NAMES and len(p) > 2 for _, p in files)
    candidates: list[_Candidate] = []
    for member, parts in files:
        if has_splits and len(parts) == 1:
            # A README or a CSV beside train/ validation/ test/, as a dataset folder has.
            report.skipped.append({"file": member.path, "reason": "not inside a split folder"})
            continue
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
            candidates.append(_Candidate(member=member, split=split, labels=label(parts[1])))
        else:
            if len(parts) < 2:
                report.skipped.append({"file": member.path, "reason": "not inside a class folder"})
                continue
            candidates.append(_Candidate(member=member, split=None, labels=label(parts[0])))
    return candidates, has_splits


def _plan_listed(
    files: list[RelativeFile], label_list: LabelList, report: Report
) -> tuple[list[_Candidate], bool]:
    """Each file listed in `label_list` with its labels and split (a line with no label: a
    negative example); files it does not list are skipped, and so are its bad lines (each
    reported with its reason)."""
    by_path = {nfc(parts): member for member, parts in files if parts != (label_list.name,)}
    # Split folders or not is decided by the lines that name a file the zip has.
    has_splits = any(line.split is not None for line in label_list.lines if line.parts in by_path)
    candidates: list[_Candidate] = []
    for line in label_list.lines:
        member = by_path.get(line.parts)
        if member is None:
            label_list.problem(line.number, f"no file {'/'.join(line.parts)!r} in the zip")
        elif has_splits and line.split is None:
            label_list.problem(line.number, "no split, while other lines give one")
        else:
            labels = tuple(sorted(line.labels))
            candidates.append(_Candidate(member=member, split=line.split, labels=labels))
    report.skipped.extend(label_list.problems)
    report.skipped.extend(
        {"file": member.path, "reason": f"not in {label_list.name}"}
        for parts, member in by_path.items()
        if parts not in label_list.named
    )
    if not candidates:
        raise BadRequestError(f"{label_list.name} lists no image of the zip that can be used")
    return candidates, has_splits


def _check_plan(
    candidates: list[_Candidate], *, has_splits: bool, adding: bool, unlabeled: int
) -> None:
    """The rules every plan keeps: classes agree across splits, names fit, and an upload has
    two classes (a zip adding to a version may hold one, or only unlabeled images)."""
    if has_splits and not adding:
        _check_split_classes(candidates)
    labels = _classes_of(candidates)
    if too_long := sorted(label for label in labels if len(label) > MAX_CLASS_NAME_CHARS):
        raise BadRequestError(
            f"class folder names are at most {MAX_CLASS_NAME_CHARS} characters; "
            f"{len(too_long)} are longer, e.g. {too_long[0][:60]!r}... ({len(too_long[0])})"
        )
    if adding:
        if not labels and not unlabeled:
            raise BadRequestError(
                f"the zip holds no images inside class folders (or {UNLABELED_FOLDER}/)"
            )
    else:
        require_two_classes(labels, what="the zip")


def _classes_of(images: Sequence[_Candidate | IngestImage]) -> set[str]:
    """Every class (label) the images have; negatives have none."""
    return {label for image in images for label in image.labels}


def _check_split_classes(candidates: list[_Candidate]) -> None:
    """Classes agree across the splits a zip gives. Where an image has several labels, a
    rare label may be missing from validation or test, but not only be there."""
    by_split: dict[str, set[str]] = defaultdict(set)
    for candidate in candidates:
        assert candidate.split is not None
        # (negatives, which have no label, need not be in every split)
        by_split[candidate.split].update(candidate.labels)
    multilabel = any(len(c.labels) > 1 for c in candidates)
    if "train" not in by_split:
        raise BadRequestError("split folders were found, but no train/ folder")
    train = by_split["train"]
    problems = []
    for split in ("validation", "test"):
        if split not in by_split:
            continue
        if not multilabel and (missing := sorted(train - by_split[split])):
            problems.append(f"{split}/ lacks {', '.join(missing)}")
        if extra := sorted(by_split[split] - train):
            problems.append(f"{split}/ has {', '.join(extra)}, which train/ lacks")
    if problems:
        raise BadRequestError("classes must agree across splits: " + "; ".join(problems))


def _deduplicate(images: list[IngestImage], report: Report) -> list[IngestImage]:
    """Keep one copy of each file: drop label conflicts, keep cross-split copies in the
    earliest split (train, then validation, then test) and report them as leakage.

    An image already in the dataset (`existing`, when a version is made) always stays where
    it is, with its class: a new copy of it is a duplicate, or leakage when it came in another
    split's folder, and a new copy under another class is the conflict that is dropped."""
    by_hash: dict[str, list[IngestImage]] = defaultdict(list)
    for image in images:
        by_hash[image.sha256].append(image)
    rank = {None: 0, "train": 0, "validation": 1, "test": 2}
    kept: list[IngestImage] = []
    for digest, copies in by_hash.items():
        labels = sorted({c.label.replace("\n", LABEL_SEPARATOR) for c in copies})
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
    images: list[IngestImage],
    *,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    task: Task = Task.MULTICLASS,
) -> None:
    """Stratified, seeded split of the images that have no split yet (class-folder layout),
    or of train into train + validation when validation/ was missing. A multi-label set's
    images with labels are split label by label (_assign_multilabel_splits); its negatives,
    like a class's images."""
    if task is Task.MULTILABEL:
        _assign_multilabel_splits(
            [i for i in images if i.labels],
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            seed=seed,
        )
        images = [i for i in images if not i.labels]
    by_label: dict[str, list[IngestImage]] = defaultdict(list)
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


def _assign_multilabel_splits(
    images: list[IngestImage], *, validation_fraction: float, test_fraction: float, seed: int
) -> None:
    """A seeded split that keeps each label's share in every split (iterative stratification,
    Sechidis et al., 2011): every label wants as many images in test and validation as a class
    of its size would get (at least one where it has three or more); the images are placed
    rarest label first, each in the split that still wants most of its rarest label, ties
    going to the split that still wants most images overall."""
    # Sorting by content hash first makes the split independent of the zip's file order.
    order = sorted(images, key=lambda i: i.sha256)
    random.Random(f"{seed}:multilabel").shuffle(order)  # noqa: S311  (a split, not a secret)
    counts = Counter(label for image in order for label in image.labels)
    wanted: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    for label, count in counts.items():
        test = _split_counts(count, test_fraction)
        validation = _split_counts(count - test, validation_fraction)
        wanted["test"][label], wanted["validation"][label] = test, validation
        wanted["train"][label] = count - test - validation
    n_test = _split_counts(len(order), test_fraction)
    n_validation = _split_counts(len(order) - n_test, validation_fraction)
    room = {"test": n_test, "validation": n_validation, "train": len(order) - n_test - n_validation}
    # Rarest label first: the images of rare labels are placed while every split has room.
    order.sort(key=lambda i: min(counts[label] for label in i.labels))
    for image in order:
        rarest = min(image.labels, key=lambda label: (counts[label], label))
        split = max(SPLITS, key=lambda s: (room[s] > 0, wanted[s][rarest], room[s], s == "train"))
        image.split = split
        room[split] -= 1
        for label in image.labels:
            wanted[split][label] -= 1


def _statistics(
    images: list[IngestImage], classes: list[str], report: Report, *, task: Task
) -> dict[str, Any]:
    widths = [i.width for i in images]
    heights = [i.height for i in images]
    train_counts = Counter(label for i in images if i.split == "train" for label in i.labels)
    what = "label" if task is Task.MULTILABEL else "class"
    for label in classes:
        if train_counts[label] < MIN_IMAGES_PER_CLASS:
            report.warnings.append(
                f"{what} {label!r} has only {train_counts[label]} training images "
                f"(fewer than {MIN_IMAGES_PER_CLASS}); expect unstable results"
            )
    smallest, largest = min(train_counts.values()), max(train_counts.values())
    # (a multi-label set's labels are as common as they are: each sigmoid learns its own)
    if task is Task.MULTICLASS and smallest and largest / smallest > MAX_IMBALANCE:
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
        "negatives": dict(Counter(str(i.split) for i in images if not i.labels)),
        **(
            {"label_cardinality": round(sum(len(i.labels) for i in images) / len(images), 3)}
            if task is Task.MULTILABEL and images
            else {}
        ),
        "warnings": report.warnings,
    }


def _unlabeled_once(
    unlabeled: list[IngestImage], *, labeled: list[IngestImage], report: Report
) -> list[IngestImage]:
    """One copy of each unlabeled file, and none of a file the version has labeled (it is
    reported as a duplicate of it)."""
    seen = {i.sha256: i.source for i in labeled}
    kept: list[IngestImage] = []
    for image in sorted(unlabeled, key=lambda i: (not i.existing, i.source)):
        if image.sha256 in seen:
            report.duplicates.append({"file": image.source, "duplicate_of": seen[image.sha256]})
            continue
        seen[image.sha256] = image.source
        kept.append(image)
    return kept


def _fingerprint(images: list[IngestImage], unlabeled: list[IngestImage]) -> str:
    lines = sorted(f"{i.split}\t{i.label}\t{i.sha256}\n" for i in images)
    if unlabeled:  # (a version with none keeps the fingerprint earlier releases gave it)
        lines += sorted(f"unlabeled\t\t{i.sha256}\n" for i in unlabeled)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _split_counts_of(images: list[IngestImage], classes: list[str]) -> dict[str, dict[str, int]]:
    """{split: {class: images with it}} for every split that has images."""
    counted = Counter((i.split, label) for i in images for label in i.labels)
    counted.update((i.split, NEGATIVE_LABEL) for i in images if not i.labels)
    return {
        split: {label: counted[(split, label)] for label in classes}
        for split in SPLITS
        if any(s == split for s, _ in counted)
    }


def _require_images_per_class(images: list[IngestImage], classes: list[str]) -> None:
    counts = Counter(label for i in images if i.split in (None, "train") for label in i.labels)
    if empty := [label for label in classes if counts[label] == 0]:
        raise BadRequestError(
            f"no valid training images left in class(es) {', '.join(empty)} "
            "(see the skipped files for reasons)"
        )


def _write_manifest(
    folder: Path,
    images: list[IngestImage],
    classes: list[str],
    *,
    task: Task,
    unlabeled: list[IngestImage],
) -> None:
    """The version's manifest: its task, classes and images. A multiclass item names its
    class ("label"; NEGATIVE_LABEL for a negative example), a multi-label item lists its
    labels ("labels", maybe none): app.ml.data.item_labels reads both."""

    def labels(image: IngestImage) -> dict[str, Any]:
        if task is Task.MULTILABEL:
            return {"labels": list(image.labels)}
        return {"label": image.label}

    def stored(image: IngestImage) -> dict[str, Any]:
        return {
            "sha256": image.sha256,
            "file": f"images/{image.sha256[:2]}/{image.sha256}",
            "width": image.width,
            "height": image.height,
            "format": image.source_format,
            "source": image.source,
        }

    items = [
        {"split": i.split, **labels(i), **stored(i)}
        for i in sorted(images, key=lambda i: (SPLITS.index(str(i.split)), i.label, i.sha256))
    ]
    manifest: dict[str, Any] = {"task": task.value, "classes": classes, "images": items}
    if unlabeled:  # images waiting for a label: no split, never trained or evaluated on
        manifest["unlabeled"] = [stored(i) for i in sorted(unlabeled, key=lambda i: i.sha256)]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
