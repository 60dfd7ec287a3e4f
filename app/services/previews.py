"""Pictures for people: a labeled grid of a dataset's images."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from app.core.config import Settings
from app.db.models import Dataset
from app.ml.data import item_labels
from app.ml.images import decode_image
from app.services.datasets import load_manifest, read_image

THUMB = 112
PAD = 6
LABEL_WIDTH = 150
# A grid of every class of a large dataset would be a huge image (600 classes: 1572x70806 px
# and 430 MB to draw); beyond this many rows the picture says how many it left out.
MAX_PREVIEW_CLASSES = 40
NOTE_HEIGHT = 30


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
