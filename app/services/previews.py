"""Pictures for people: a labeled grid of a dataset's images, and one image's thumbnail."""

from __future__ import annotations

import io
import uuid
from collections import defaultdict
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from app.core.config import Settings
from app.core.errors import NotFoundError
from app.core.kept import Kept
from app.db.models import Dataset
from app.ml.data import item_labels
from app.ml.images import decode_image, decode_opened, open_image
from app.services.datasets import load_manifest, read_image
from app.services.inference import MemoryBudget

THUMB = 112
PAD = 6
LABEL_WIDTH = 150
# A grid of every class of a large dataset would be a huge image (600 classes: 1572x70806 px
# and 430 MB to draw); beyond this many rows the picture says how many it left out.
MAX_PREVIEW_CLASSES = 40
NOTE_HEIGHT = 30
# Thumbnails are drawn at most this many pixels on a side (a grid never needs more).
MAX_THUMBNAIL_SIDE = 512
# Datasets whose image index (sha256 -> manifest entry) this process keeps: a grid of
# thumbnails asks for many images of one version, which never changes.
KEPT_INDEXES = 8


def dataset_preview_png(dataset: Dataset, *, settings: Settings, per_class: int) -> bytes:
    """PNG: one row per class (the first MAX_PREVIEW_CLASSES; a last line says how many are
    left out), its first `per_class` training images as thumbnails."""
    manifest = load_manifest(dataset.id)
    all_classes: list[str] = manifest["classes"]
    classes = all_classes[:MAX_PREVIEW_CLASSES]
    shown = set(classes)
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in manifest["images"]:
        if item["split"] != "train":
            continue
        for label in item_labels(item):  # a multi-label image shows in each of its rows
            if label in shown and len(by_label[label]) < per_class:
                by_label[label].append(item)
    left_out = len(all_classes) - len(classes)
    width = LABEL_WIDTH + per_class * (THUMB + PAD) + PAD
    height = len(classes) * (THUMB + PAD) + PAD + (NOTE_HEIGHT if left_out else 0)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=16)
    for row, label in enumerate(classes):
        top = PAD + row * (THUMB + PAD)
        count = dataset.split_counts.get("train", {}).get(label, 0)
        draw.text((PAD, top + THUMB // 2 - 18), label[:18], fill="black", font=font)
        draw.text((PAD, top + THUMB // 2 + 2), f"{count} train", fill="gray", font=font)
        for column, item in enumerate(by_label[label]):
            data = read_image(dataset, item)
            thumb = decode_image(
                data, max_pixels=settings.max_image_pixels, target_size=THUMB // 2
            ).image
            thumb.thumbnail((THUMB, THUMB))
            left = LABEL_WIDTH + column * (THUMB + PAD)
            canvas.paste(
                thumb, (left + (THUMB - thumb.width) // 2, top + (THUMB - thumb.height) // 2)
            )
    if left_out:
        draw.text(
            (PAD, height - NOTE_HEIGHT + PAD),
            f"showing {len(classes)} of {len(all_classes)} classes ({left_out} not shown)",
            fill="black",
            font=font,
        )
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


_indexes: Kept[uuid.UUID, dict[str, dict[str, Any]]] = Kept(KEPT_INDEXES)


def image_entry(dataset: Dataset, image_id: str) -> dict[str, Any]:
    """The manifest entry of one image of the dataset version (by its sha256), labeled or
    not; NotFoundError if the version has no such image."""
    index = _indexes.get(dataset.id)
    if index is None:
        manifest = load_manifest(dataset.id)
        index = {
            item["sha256"]: item for item in [*manifest["images"], *manifest.get("unlabeled", [])]
        }
        _indexes.put(dataset.id, index)
    item = index.get(image_id)
    if item is None:
        raise NotFoundError(f"dataset {dataset.id} has no image {image_id}")
    return item


def thumbnail_jpeg(
    dataset: Dataset, image_id: str, *, size: int, settings: Settings, budget: MemoryBudget
) -> bytes:
    """One image of the dataset as a JPEG at most `size` pixels on a side, upright (EXIF
    orientation applied, as training saw it), decoded under the process' decode budget (a
    grid asks for dozens at once)."""
    data = read_image(dataset, image_entry(dataset, image_id))
    opened = open_image(data, max_pixels=settings.max_image_pixels, target_size=size)
    with budget.reserve(opened.decode_bytes, timeout=settings.predict_timeout_seconds):
        image = decode_opened(opened).image
        image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
