"""A version's formats for devices, built in a worker and checked before anyone downloads
them: calibrated on up to 300 of the training images of the version's dataset, then run by
their own runtime on its test split (its validation split if it has none) beside the float
model, every image decoded as /predict decodes it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import get_settings
from app.ml.config import Task
from app.ml.data import encode_labels, item_labels, manifest_task
from app.ml.edge import (
    EDGE_FILES,
    MAX_CALIBRATION_IMAGES,
    MAX_CHECK_IMAGES,
    EdgeExportError,
    EdgeModel,
    EdgeReport,
    HeldOutImages,
    KerasModel,
    OnnxModel,
    build,
    measure,
)
from app.ml.export import ONNX_FILE
from app.ml.images import decode_image, image_to_array
from app.ml.serving import META_FILE, label_thresholds, load_keras_model
from app.services.datasets import load_manifest
from app.services.datasets.files import local_images
from app.services.exports.formats import DownloadFormat, edge_format


def _spread(items: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """At most `most` of `items`, evenly spread over them (the manifest lists them by split
    and label, so every label keeps its share)."""
    if len(items) <= most:
        return items
    picks = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[i] for i in picks]


class _VersionImages:
    """The images of a version's dataset, decoded for the version's input size."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        dataset = metadata.get("dataset") or {}
        try:
            self.dataset_id = uuid.UUID(str(dataset.get("id")))
            self.manifest = load_manifest(self.dataset_id)
        except Exception as exc:
            raise EdgeExportError(
                f"the version's dataset {dataset.get('id')} cannot be read ({exc}): an export "
                "is only handed over once it is checked on held-out images"
            ) from exc
        self.image_size = int(metadata["input"]["image_size"])
        self.max_pixels = get_settings().max_image_pixels

    def items(self, split: str, classes: list[str]) -> list[dict[str, Any]]:
        known = set(classes)
        return [
            item
            for item in self.manifest["images"]
            if item["split"] == split and set(item_labels(item)) <= known
        ]

    def decoded(self, items: list[dict[str, Any]]) -> Iterator[np.ndarray]:
        folder = local_images(self.dataset_id, items)
        for item in items:
            image = decode_image(
                (folder / item["file"]).read_bytes(),
                max_pixels=self.max_pixels,
                target_size=self.image_size,
            )
            yield image_to_array(image.image).astype(np.float32)


def held_out_images(metadata: dict[str, Any], images: _VersionImages) -> HeldOutImages:
    classes: list[str] = metadata["classes"]
    task = Task(metadata.get("task", manifest_task(images.manifest).value))
    for split in ("test", "validation"):
        items = images.items(split, classes)
        if task is Task.MULTICLASS:
            items = [item for item in items if item_labels(item)]  # not the negative examples
        if items:
            break
    else:
        raise EdgeExportError("the version's dataset has no test or validation images")
    items = _spread(items, MAX_CHECK_IMAGES)
    return HeldOutImages(
        images=lambda: images.decoded(items),
        truth=encode_labels(items, classes, task=task),
        classes=classes,
        task=task,
        split=split,
        thresholds=label_thresholds(metadata, classes) if task is Task.MULTILABEL else None,
    )


def build_checked(folder: Path, work: Path, *, fmt: DownloadFormat) -> tuple[Path, EdgeReport]:
    """The version in `fmt` (a file in `work`) and its check on held-out images."""
    edge = edge_format(fmt)
    metadata = json.loads((folder / META_FILE).read_text())
    images = _VersionImages(metadata)
    held_out = held_out_images(metadata, images)
    calibration = _spread(images.items("train", metadata["classes"]), MAX_CALIBRATION_IMAGES)
    keras_model: list[Any] = []

    def model() -> Any:
        if not keras_model:
            keras_model.append(load_keras_model(folder))
        return keras_model[0]

    target = work / EDGE_FILES[edge]
    float_onnx = folder / ONNX_FILE
    seconds = build(
        edge,
        target,
        model=model,
        float_onnx=float_onnx,
        calibration=lambda: images.decoded(calibration),
    )
    reference: EdgeModel = OnnxModel(float_onnx) if float_onnx.is_file() else KerasModel(model())
    report = measure(
        edge,
        target,
        held_out=held_out,
        reference=reference,
        max_loss_points=get_settings().edge_export_max_loss_points,
        seconds=seconds,
    )
    return target, report
