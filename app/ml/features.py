"""The features stage: a frozen base's outputs for every image, computed once and cached.

Two outputs per image and view (the image, and its mirror image):
- `pooled`: the base's global-average-pooled features, what a head is trained on;
- `top`: the activations entering the base's top block (float16), so that fine-tuning runs
  the top block alone, not the whole base, every epoch.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.ml.data import SplitSource
from app.ml.fitting import ProgressCallback, TrainingHooks
from app.ml.images import DECODER_VERSION

VIEWS = ("original", "mirrored")


@dataclass(frozen=True)
class FeatureRequest:
    """Which arrays a run needs: for each split its views, and whether the top inputs too."""

    views: dict[str, tuple[str, ...]]  # split -> views
    top_inputs: bool

    def names(self) -> list[str]:
        outputs = ("pooled", "top") if self.top_inputs else ("pooled",)
        return [
            array_name(split, view, output)
            for split, views in self.views.items()
            for view in views
            for output in outputs
        ]


def array_name(split: str, view: str, output: str) -> str:
    return f"{split}/{view}/{output}"


def feature_cache_key(
    *,
    dataset_fingerprint: str,
    base_model: str,
    weights_sha256: str,
    image_size: int,
    request: FeatureRequest,
) -> str:
    """Everything that changes the features: the images, the base and its weights, the size,
    the views and outputs kept, how images are decoded, the Keras version and its dtype policy
    (float16 on GPU workers gives other numbers than float32). Not the runtime that ran the
    base: ONNX Runtime's features are checked to equal Keras' within 1e-4 of their scale when
    the extractor is exported, float rounding like oneDNN's."""
    import keras

    policy = keras.mixed_precision.global_policy().name
    text = "|".join(
        [
            dataset_fingerprint,
            base_model,
            weights_sha256,
            str(image_size),
            ",".join(sorted(request.names())),
            f"decoder-{DECODER_VERSION}",
            f"keras-{keras.__version__}",
            policy,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def features_prefix(dataset_fingerprint: str) -> str:
    """What the names of a dataset's cached feature files start with: they are found (and
    removed with the dataset) by it alone."""
    return f"{dataset_fingerprint}-"


def feature_file_name(*, dataset_fingerprint: str, key: str) -> str:
    """The cached features' file name: features_prefix, then everything else they depend on."""
    return f"{features_prefix(dataset_fingerprint)}{key}.npz"


def fingerprint_of_feature_file(name: str) -> str | None:
    """The dataset fingerprint a feature file belongs to; None for a file of no dataset (a
    base's exported extractor) and "" for a file in no naming this code makes (from an
    earlier version of it: nothing reads it any more)."""
    if name.startswith("extractor-"):
        return None
    fingerprint, dash, _ = name.partition("-")
    return fingerprint if dash and len(fingerprint) == 64 else ""


class CacheMirror(Protocol):
    """A copy of a cache folder that other machines share (a bucket): what one worker
    computed, a worker elsewhere downloads instead of computing it again."""

    def pull(self, name: str, target: Path) -> bool:
        """Download `name` into `target` if the mirror has it; False if it does not."""

    def push(self, name: str, source: Path) -> None: ...


def _cached(path: Path, mirror: CacheMirror | None) -> bool:
    """Whether `path` is here now (from this machine's cache, or pulled from the mirror)."""
    return path.is_file() or (mirror is not None and mirror.pull(path.name, path))


def load_or_compute(
    path: Path, compute: Callable[[], dict[str, np.ndarray]], *, mirror: CacheMirror | None = None
) -> tuple[dict[str, np.ndarray], bool]:
    """The cached arrays at `path` or in the mirror (hit=True), or compute, store atomically
    (and in the mirror) and return them."""
    if _cached(path, mirror):
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
    if mirror is not None:
        mirror.push(path.name, path)
    return arrays, False


class OnnxExtractor:
    """A feature extractor exported to ONNX, run by ONNX Runtime, with the part of a Keras
    model's interface that extract_features uses. On 2 CPU cores it extracted 226 images/s
    where Keras managed 82 (MobileNetV2, 224 px; docs/BENCHMARKS.md, "predict")."""

    def __init__(self, path: Path) -> None:
        from app.ml.export import onnx_session

        self._session = onnx_session(path)
        self._outputs = len(self._session.get_outputs())

    def predict(
        self,
        pixels: np.ndarray,
        *,
        batch_size: int,
        verbose: int = 0,  # noqa: ARG002  (keras.Model.predict's keyword; no meaning here)
        callbacks: list[Any],
    ) -> Any:
        from app.ml.export import INPUT_NAME

        parts: list[list[np.ndarray]] = [[] for _ in range(self._outputs)]
        for batch, start in enumerate(range(0, len(pixels), batch_size)):
            chunk = np.ascontiguousarray(pixels[start : start + batch_size], dtype=np.float32)
            for part, output in zip(
                parts, self._session.run(None, {INPUT_NAME: chunk}), strict=True
            ):
                part.append(output)
            for callback in callbacks:
                callback.on_predict_batch_end(batch)
        arrays = [np.concatenate(part) for part in parts]
        return arrays if self._outputs > 1 else arrays[0]


def onnx_extractor(
    extractor: Any,
    *,
    cache_dir: Path,
    key: str,
    image_size: int,
    mirror: CacheMirror | None = None,
) -> OnnxExtractor:
    """`extractor` as an OnnxExtractor, exported once into `cache_dir` (and the mirror) under
    `key` (everything that changes it: the base, its weights, the size, the outputs, the Keras
    version) and reused by later jobs; ExportError if it cannot be exported faithfully."""
    from app.ml.export import export_extractor

    path = cache_dir / f"extractor-{key}.onnx"
    if not _cached(path, mirror):
        cache_dir.mkdir(parents=True, exist_ok=True)
        export_extractor(extractor, path, image_size=image_size)
        if mirror is not None:
            mirror.push(path.name, path)
    return OnnxExtractor(path)


def extract_features(
    extractor: object,
    splits: SplitSource,
    request: FeatureRequest,
    *,
    hooks: TrainingHooks,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Run the frozen base over every requested split and view. `extractor` maps resized
    pixels to [pooled] or [pooled, top inputs] (builders.feature_extractor)."""
    arrays: dict[str, np.ndarray] = {}
    for split, views in request.views.items():
        images = splits.arrays(split).images
        for view in views:
            pixels = images if view == "original" else images[:, :, ::-1, :]
            progress = ProgressCallback(hooks, {"stage": "features", "split": split, "view": view})
            outputs = extractor.predict(  # type: ignore[attr-defined]
                pixels, batch_size=batch_size, verbose=0, callbacks=[progress]
            )
            if request.top_inputs:
                pooled, top = outputs
                arrays[array_name(split, view, "top")] = top.astype(np.float16)
            else:
                pooled = outputs
            arrays[array_name(split, view, "pooled")] = pooled.astype(np.float32)
    return arrays
