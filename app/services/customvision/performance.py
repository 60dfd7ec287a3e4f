"""An iteration's performance as Custom Vision reports it: per tag, precision and recall of
answering the tag where its probability reaches a threshold, and average precision; over the
tags, the same counted together, and the mean average precision. Measured on the images the
training held out (the snapshot's test split, else its validation split) with the iteration's
own model, once per iteration and process."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from app.db.customvision import CvIteration
from app.ml.data import item_labels
from app.ml.multilabel import average_precision
from app.schemas.customvision import IterationPerformance, TagPerformance
from app.services.datasets import load_manifest
from app.services.storage import get_storage

# Iterations whose held-out answers this process keeps (each: images x tags floats).
KEPT_ITERATIONS = 16


@dataclass(frozen=True)
class HeldOut:
    """The held-out images' answers: probabilities and 0/1 truth, (images, classes) each."""

    classes: list[str]
    probabilities: np.ndarray
    truth: np.ndarray


_kept: OrderedDict[str, HeldOut] = OrderedDict()
_lock = threading.Lock()


def remembered(iteration: CvIteration) -> HeldOut | None:
    with _lock:
        found = _kept.get(str(iteration.id))
        if found is not None:
            _kept.move_to_end(str(iteration.id))
        return found


def remember(iteration: CvIteration, held_out: HeldOut) -> None:
    with _lock:
        _kept[str(iteration.id)] = held_out
        while len(_kept) > KEPT_ITERATIONS:
            _kept.popitem(last=False)


def held_out_images(iteration: CvIteration) -> tuple[list[str], list[bytes], np.ndarray]:
    """The classes, the held-out images' files and their 0/1 truth rows (a negative
    example's row is all 0)."""
    assert iteration.dataset_id is not None
    manifest = load_manifest(iteration.dataset_id)
    classes: list[str] = manifest["classes"]
    items = [item for item in manifest["images"] if item["split"] == "test"]
    if not items:
        items = [item for item in manifest["images"] if item["split"] == "validation"]
    store = get_storage().datasets
    files = [store.get_bytes(f"{iteration.dataset_id}/{item['file']}") for item in items]
    truth = np.zeros((len(items), len(classes)), dtype=np.float64)
    index = {name: i for i, name in enumerate(classes)}
    for row, item in enumerate(items):
        for label in item_labels(item):
            truth[row, index[label]] = 1.0
    return classes, files, truth


def performance(
    held_out: HeldOut, *, threshold: float, tag_ids: dict[str, str]
) -> IterationPerformance:
    """Custom Vision's IterationPerformance at `threshold` (standard deviations: 0, one
    held-out split gives no spread)."""
    answered = held_out.probabilities >= threshold
    truth = held_out.truth > 0
    per_tag = []
    precisions, recalls, aps = [], [], []
    for j, name in enumerate(held_out.classes):
        tp = float(np.sum(answered[:, j] & truth[:, j]))
        fp = float(np.sum(answered[:, j] & ~truth[:, j]))
        fn = float(np.sum(~answered[:, j] & truth[:, j]))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        ap = average_precision(held_out.probabilities[:, j], truth[:, j]) or 0.0
        precisions.append(precision)
        recalls.append(recall)
        aps.append(ap)
        per_tag.append(
            TagPerformance(
                id=tag_ids.get(name, ""),
                name=name,
                precision=precision,
                precision_std_deviation=0.0,
                recall=recall,
                recall_std_deviation=0.0,
                average_precision=ap,
            )
        )
    tp = float(np.sum(answered & truth))
    fp = float(np.sum(answered & ~truth))
    fn = float(np.sum(~answered & truth))
    return IterationPerformance(
        per_tag_performance=per_tag,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        precision_std_deviation=0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        recall_std_deviation=0.0,
        average_precision=float(np.mean(aps)) if aps else 0.0,
    )
