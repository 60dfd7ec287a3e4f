"""Loading a dataset's images (from its manifest) as arrays at the model's input size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.images import decode_image, image_to_array


@dataclass(frozen=True)
class SplitArrays:
    images: np.ndarray  # float32 (n, size, size, 3), pixel values 0..255
    labels: np.ndarray  # int32 (n,), index into the class list

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def resize_pixels(pixels: np.ndarray, *, image_size: int) -> np.ndarray:
    """Resize one (h, w, 3) image exactly as the model's Resizing layer does when serving."""
    import keras

    resized = keras.ops.image.resize(
        pixels.astype("float32"), (image_size, image_size), interpolation="bilinear"
    )
    return np.asarray(keras.ops.convert_to_numpy(resized), dtype=np.float32)


def load_split(
    manifest: dict[str, Any],
    *,
    dataset_dir: Path,
    split: str,
    image_size: int,
    max_pixels: int,
) -> SplitArrays:
    """The images of one split, decoded with the shared decoder and resized for the model."""
    classes: list[str] = manifest["classes"]
    items = [item for item in manifest["images"] if item["split"] == split]
    images = np.zeros((len(items), image_size, image_size, 3), dtype=np.float32)
    labels = np.zeros((len(items),), dtype=np.int32)
    for index, item in enumerate(items):
        decoded = decode_image((dataset_dir / item["file"]).read_bytes(), max_pixels=max_pixels)
        images[index] = resize_pixels(image_to_array(decoded.image), image_size=image_size)
        labels[index] = classes.index(item["label"])
    return SplitArrays(images=images, labels=labels)


def balanced_class_weights(labels: np.ndarray, class_count: int) -> dict[int, float]:
    """Weights that make every class count as much as the others ("balanced")."""
    counts = np.bincount(labels, minlength=class_count).astype(np.float64)
    total = counts.sum()
    return {
        index: float(total / (class_count * count)) if count else 0.0
        for index, count in enumerate(counts)
    }
