"""Real (untrained) Keras classifiers registered in the models store, for serving tests."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from app.db.models import ModelVersion


def scratch_model(classes: int, *, image_size: int = 64, seed: int = 3):
    """The scratch CNN with random (seeded) weights."""
    import keras

    from app.ml import builders
    from app.ml.config import Method, TrainConfig

    config = TrainConfig(
        method=Method.SCRATCH,
        image_size=image_size,
        epochs=1,
        batch_size=8,
        learning_rate=1e-3,
        dropout=0.5,
        seed=seed,
    )
    keras.utils.set_random_seed(seed)
    return builders.build_scratch_model(config, class_count=classes)


def register_tiny_model(
    name: str,
    *,
    classes: tuple[str, ...] = ("cats", "dogs"),
    image_size: int = 32,
    seed: int = 0,
    owner: str | None = None,
    onnx: bool = True,
    dataset_id: str | None = None,
) -> ModelVersion:
    """Build the scratch CNN (random weights, seeded), write it as training does (with its
    ONNX export unless `onnx` is False: a version saved before exports existed), register it
    (as trained on `dataset_id`, if given)."""
    from app.ml.serving import write_model_files
    from app.services import model_versions

    model = scratch_model(len(classes), image_size=image_size, seed=seed)
    metadata: dict[str, Any] = {"input": {"image_size": image_size}, "classes": list(classes)}
    if dataset_id is not None:
        metadata.update(dataset={"id": dataset_id}, task="multiclass")
    with tempfile.TemporaryDirectory() as tmp:
        write_model_files(
            Path(tmp), model=model, classes=list(classes), metadata=metadata, onnx=onnx
        )
        return model_versions.register_version(
            name=name,
            job_id=None,
            owner=owner,
            source_dir=Path(tmp),
            metadata=metadata,
            metrics_summary={"test_accuracy": None},
        )


def train_on_photos(
    root: Path,
    images: list[dict[str, str]],
    *,
    classes: list[str],
    config: Any,
    cache: Path,
    task: str = "multiclass",
) -> Any:
    """The service's training code (app.ml.train) on photos under `root` ({"split", "file",
    "label"} each; {"split", "file", "labels"} for a multi-label `task`), with the offline
    weights of config.base_model; its TrainingOutcome."""
    import hashlib
    import json

    from app.ml import bases
    from app.ml.data import ManifestSplits
    from app.ml.fitting import TrainingHooks
    from app.ml.train import PretrainedSource, train
    from tests.zips import SHARED

    splits = ManifestSplits(
        {"task": task, "classes": classes, "images": images},
        files=lambda _: root,
        image_size=config.image_size,
        max_pixels=10**8,
    )
    spec = bases.BASES[bases.BaseName(config.base_model)]
    weights = bases.find_weights(spec, weights_dir=SHARED / "weights")
    assert weights is not None
    source = PretrainedSource(
        weights_path=weights,
        weights_sha256="test",
        dataset_fingerprint=hashlib.sha256(json.dumps(images).encode()).hexdigest(),
        feature_cache_dir=cache,
    )
    return train(config, splits=splits, hooks=TrainingHooks(), pretrained=source)
