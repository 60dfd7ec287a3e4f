"""Loading a dataset's images (from its manifest) as arrays at the model's input size."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.ml.config import Task
from app.ml.images import decode_image, image_to_array

# The manifest's label of a negative example: an image of none of the classes, which the
# "unknown" answer learns from (app/ml/outliers.py). Never a class.
NEGATIVE_LABEL = "_negative"
# Where a run finds them: the training split's negatives, and the others (to check with).
TRAIN_NEGATIVES = "train_negatives"
HELD_OUT_NEGATIVES = "held_out_negatives"
SPLIT_NAMES = ("train", "validation", "test")
# Every split a run may get, in order: the classes' three and the negatives' two.
ALL_SPLITS = (*SPLIT_NAMES, TRAIN_NEGATIVES, HELD_OUT_NEGATIVES)


def manifest_task(manifest: dict[str, Any]) -> Task:
    """The task of a dataset's manifest (manifests of earlier releases are multiclass)."""
    return Task(manifest.get("task", Task.MULTICLASS))


def item_labels(item: dict[str, Any]) -> list[str]:
    """The labels of a manifest item: a multi-label item lists them ("labels"), a multiclass
    item names its class ("label"); a negative example has none."""
    if "labels" in item:
        return list(item["labels"])
    return [] if item["label"] == NEGATIVE_LABEL else [str(item["label"])]


def _in_split(item: dict[str, Any], split: str) -> bool:
    """Whether a manifest item belongs to `split`: one of SPLIT_NAMES (the images of the
    classes) or one of the negatives' two. A multi-label item with no label is an example
    like any other (every sigmoid's answer "no"): it stays in its split."""
    if "labels" in item:
        return bool(item["split"] == split)
    negative = bool(item["label"] == NEGATIVE_LABEL)
    in_train = bool(item["split"] == "train")
    if split == TRAIN_NEGATIVES:
        return negative and in_train
    if split == HELD_OUT_NEGATIVES:
        return negative and not in_train
    return not negative and bool(item["split"] == split)


def split_items(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The manifest items of `split`, in the order a run's arrays of it hold them."""
    return [item for item in manifest["images"] if _in_split(item, split)]


@dataclass(frozen=True)
class SplitArrays:
    images: np.ndarray  # float32 (n, size, size, 3), pixel values 0..255
    # multiclass: int32 (n,), index into the class list (-1: a negative example);
    # multilabel: float32 (n, classes), 1 where the image has the label
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@functools.cache
def _compiled_resize(image_size: int) -> Callable[[Any], Any]:
    import keras
    import tensorflow as tf

    def resize(pixels: Any) -> Any:
        return keras.ops.image.resize(pixels, (image_size, image_size), interpolation="bilinear")

    # The very op of keras.layers.Resizing, compiled: 6x faster than eager per image here,
    # with bit-identical output. reduce_retracing: one graph for all the input sizes.
    return tf.function(resize, reduce_retracing=True)  # type: ignore[no-any-return]


def resize_pixels(pixels: np.ndarray, *, image_size: int) -> np.ndarray:
    """Resize one (h, w, 3) image exactly as the model's Resizing layer does when serving."""
    resized = _compiled_resize(image_size)(pixels.astype("float32"))
    return np.asarray(resized.numpy(), dtype=np.float32)


# How often (seconds) image loading reports its progress (which is also the job's heartbeat).
PROGRESS_INTERVAL_SECONDS = 1.0


# Where a dataset's image files are: given manifest entries, a local folder in which each
# entry's `file` is found (the caller may have to fetch them there first: from a bucket).
ImageFiles = Callable[[list[dict[str, Any]]], Path]


def load_split(
    manifest: dict[str, Any],
    *,
    files: ImageFiles,
    split: str,
    image_size: int,
    max_pixels: int,
    on_progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> SplitArrays:
    """The images of one split, decoded with the shared decoder and resized for the model;
    `on_progress` hears how far it got about once a second."""
    classes: list[str] = manifest["classes"]
    items = split_items(manifest, split)
    on_progress({"stage": "loading", "split": split, "images": 0, "of": len(items)})
    dataset_dir = files(items)
    images = np.zeros((len(items), image_size, image_size, 3), dtype=np.float32)
    reported = time.monotonic()
    for index, item in enumerate(items):
        if index and time.monotonic() - reported >= PROGRESS_INTERVAL_SECONDS:
            reported = time.monotonic()
            on_progress({"stage": "loading", "split": split, "images": index, "of": len(items)})
        decoded = decode_image(
            (dataset_dir / item["file"]).read_bytes(),
            max_pixels=max_pixels,
            target_size=image_size,
        )
        images[index] = resize_pixels(image_to_array(decoded.image), image_size=image_size)
    labels = encode_labels(items, classes, task=manifest_task(manifest))
    return SplitArrays(images=images, labels=labels)


def encode_labels(items: list[dict[str, Any]], classes: list[str], *, task: Task) -> np.ndarray:
    """The labels of manifest items as a run takes them: class indices (-1: a negative
    example) for a multiclass dataset, rows of 0/1 per label for a multi-label one."""
    index = {name: position for position, name in enumerate(classes)}
    if task is Task.MULTILABEL:
        rows = np.zeros((len(items), len(classes)), dtype=np.float32)
        for row, item in enumerate(items):
            rows[row, [index[label] for label in item_labels(item)]] = 1.0
        return rows
    return np.array(
        [index[labels[0]] if (labels := item_labels(item)) else -1 for item in items],
        dtype=np.int32,
    )


def balanced_label_weights(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A multi-label set's weights per label, for its positive and its negative examples,
    that make each label's two answers count alike ("balanced", as for classes): a label on
    10 of 100 images weighs its positives 5 and its negatives 0.56. A label no image has (or
    every image has) keeps weight 1."""
    count = float(len(labels))
    positives = labels.sum(axis=0).astype(np.float64)
    negatives = count - positives
    usable = (positives > 0) & (negatives > 0)
    positive_weights = np.where(usable, count / (2 * np.maximum(positives, 1)), 1.0)
    negative_weights = np.where(usable, count / (2 * np.maximum(negatives, 1)), 1.0)
    return positive_weights.astype(np.float32), negative_weights.astype(np.float32)


def balanced_class_weights(labels: np.ndarray, class_count: int) -> dict[int, float]:
    """Weights that make every class count as much as the others ("balanced")."""
    counts = np.bincount(labels, minlength=class_count).astype(np.float64)
    total = counts.sum()
    return {
        index: float(total / (class_count * count)) if count else 0.0
        for index, count in enumerate(counts)
    }


class ManifestSplits:
    """A dataset's splits, read from its manifest; pixels are decoded only when first asked for
    (a bottleneck job with cached features never needs them)."""

    def __init__(
        self,
        manifest: dict[str, Any],
        *,
        files: ImageFiles,
        image_size: int,
        max_pixels: int,
        on_progress: Callable[[dict[str, Any]], None] = lambda _: None,
    ) -> None:
        self.manifest = manifest
        self.classes: list[str] = manifest["classes"]
        self.task = manifest_task(manifest)
        self.files = files
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.on_progress = on_progress
        self.names = [
            name for name in ALL_SPLITS if any(_in_split(item, name) for item in manifest["images"])
        ]
        self._arrays: dict[str, SplitArrays] = {}

    def labels(self, split: str) -> np.ndarray:
        """Class indices (-1 for a negative example), or rows of 0/1 per label (encode_labels)."""
        items = split_items(self.manifest, split)
        return encode_labels(items, self.classes, task=self.task)

    def arrays(self, split: str) -> SplitArrays:
        if split not in self._arrays:
            self._arrays[split] = load_split(
                self.manifest,
                files=self.files,
                split=split,
                image_size=self.image_size,
                max_pixels=self.max_pixels,
                on_progress=self.on_progress,
            )
        return self._arrays[split]


class SplitSource(Protocol):
    """Where a training run gets its splits from: any of ALL_SPLITS."""

    names: list[str]
    classes: list[str]
    task: Task

    def labels(self, split: str) -> np.ndarray: ...

    def arrays(self, split: str) -> SplitArrays: ...


class InMemorySplits:
    """Splits already loaded as arrays."""

    def __init__(
        self, splits: dict[str, SplitArrays], classes: list[str], task: Task = Task.MULTICLASS
    ) -> None:
        self._splits = splits
        self.classes = classes
        self.task = task
        self.names = [name for name in ALL_SPLITS if name in splits]

    def labels(self, split: str) -> np.ndarray:
        return self._splits[split].labels

    def arrays(self, split: str) -> SplitArrays:
        return self._splits[split]
