"""On-disk cache of bottleneck features, keyed by everything that determines them."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np


def feature_cache_key(
    *,
    dataset_fingerprint: str,
    base_model: str,
    weights_sha256: str,
    image_size: int,
    mirrored_train: bool,
) -> str:
    text = f"{dataset_fingerprint}|{base_model}|{weights_sha256}|{image_size}"
    if mirrored_train:  # also holds the features of the mirrored training images
        text += "|mirrored-train"
    return hashlib.sha256(text.encode()).hexdigest()


def load_or_compute(
    path: Path, compute: Callable[[], dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], bool]:
    """The cached arrays at `path` (hit=True), or compute, store atomically and return them."""
    if path.is_file():
        with np.load(path) as cached:
            return {name: cached[name] for name in cached.files}, True
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")
    try:
        with partial.open("wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.replace(partial, path)  # concurrent jobs: the last complete file wins, never a torn one
    finally:
        partial.unlink(missing_ok=True)
    return arrays, False
