"""Pure-Keras pieces of training: resizing parity, BatchNorm freeze, seeded reproducibility."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from app.ml import bases, builders
from app.ml.config import Augmentation, TrainConfig
from app.ml.data import InMemorySplits, SplitArrays, resize_pixels
from app.ml.train import TrainingHooks, train

WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "weights"


def test_loader_resizes_exactly_like_the_models_resizing_layer() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(37, 53, 3)).astype("uint8")
    layer = keras.layers.Resizing(32, 32)
    expected = np.asarray(layer(pixels[None].astype("float32")))[0]
    np.testing.assert_array_equal(resize_pixels(pixels, image_size=32), expected)


def _mobilenet_base() -> tuple[keras.Model, bases.BaseSpec]:
    spec = bases.BASES["mobilenet"]
    weights = bases.resolve_weights(spec, weights_dir=WEIGHTS, allow_download=False)
    return bases.build_base(spec, image_size=32, weights=weights), spec


def _batch_norm_stats(model: keras.Model) -> list[np.ndarray]:
    return [
        keras.ops.convert_to_numpy(weight)
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
        for weight in (layer.moving_mean, layer.moving_variance)
    ]


def _finetune_step(freeze: bool) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    keras.utils.set_random_seed(0)
    base, spec = _mobilenet_base()
    head = builders.build_head(base.output_shape[-1], class_count=2, dropout=0.0, seed=0)
    builders.unfreeze_top(base, spec)
    if not freeze:  # negative control: BN layers trainable again, as without our freeze
        for layer in base._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = True
    model = builders.build_pretrained_model(base, head, spec, image_size=32)
    model.compile(optimizer=keras.optimizers.SGD(1e-2, momentum=0.9), loss="binary_crossentropy")
    top_kernel = keras.ops.convert_to_numpy(base.get_layer("conv_pw_13").kernel)
    before = _batch_norm_stats(base)
    pixels = np.random.default_rng(0).uniform(0, 255, size=(8, 32, 32, 3)).astype("float32")
    model.fit(pixels, np.array([0, 1] * 4), epochs=1, batch_size=8, verbose=0)
    kernel_changed = not np.allclose(
        top_kernel, keras.ops.convert_to_numpy(base.get_layer("conv_pw_13").kernel)
    )
    return before, _batch_norm_stats(base), kernel_changed


def test_finetuning_trains_the_top_block_but_not_batchnorm_statistics() -> None:
    before, after, kernel_changed = _finetune_step(freeze=True)
    assert kernel_changed  # the unfrozen top block did learn
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)


def test_without_the_freeze_batchnorm_statistics_would_drift() -> None:
    before, after, _ = _finetune_step(freeze=False)
    assert any(not np.allclose(old, new) for old, new in zip(before, after, strict=True))


def _tiny_splits() -> InMemorySplits:
    rng = np.random.default_rng(5)

    def split(n: int) -> SplitArrays:
        labels = np.arange(n, dtype=np.int32) % 2
        images = rng.uniform(0, 255, size=(n, 32, 32, 3)).astype("float32")
        images[labels == 1, :, :, 0] = 255.0  # a red channel the model can learn
        return SplitArrays(images=images, labels=labels)

    return InMemorySplits({"train": split(16), "validation": split(8)}, ["a", "b"])


@pytest.mark.parametrize("method", ["scratch", "finetune"])
def test_same_seed_same_run(method: str, tmp_path: Path) -> None:
    from app.ml.train import PretrainedSource

    config = TrainConfig(
        method=method, image_size=32, epochs=2, batch_size=4, learning_rate=1e-3,
        dropout=0.3, seed=11, base_model="mobilenet", augmentation=Augmentation(), head_epochs=1,
    )  # fmt: skip
    runs = []
    for attempt in range(2):
        records: list = []
        source = PretrainedSource(
            weights_dir=WEIGHTS, allow_download=False,
            feature_cache_dir=tmp_path / f"cache{attempt}", dataset_fingerprint="tiny",
        )  # fmt: skip
        outcome = train(config, splits=_tiny_splits(), hooks=TrainingHooks(
            on_epoch_end=records.append), pretrained=source)  # fmt: skip
        runs.append(([(r.loss, r.val_loss) for r in records], outcome.evaluation))
    assert runs[0] == runs[1]
    assert runs[0][1]["split"] == "validation"  # no test split: evaluated on validation


TINY_SCRATCH = TrainConfig(
    method="scratch", image_size=32, epochs=1, batch_size=4, learning_rate=1e-3, dropout=0.0,
    seed=3,
)  # fmt: skip


def _scratch_classifier() -> keras.Model:
    keras.utils.set_random_seed(TINY_SCRATCH.seed)
    return builders.build_scratch_model(TINY_SCRATCH, class_count=3)


def _infer(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    # training=False, as serving calls it: a bare call runs BatchNormalization in training mode
    return np.asarray(model(pixels, training=False))


def test_flip_averaged_model_is_the_mean_over_the_mirror_and_survives_saving(
    tmp_path: Path,
) -> None:
    classifier = _scratch_classifier()
    averaged = builders.with_test_time_flip(classifier)
    pixels = np.random.default_rng(2).uniform(0, 255, size=(4, 40, 56, 3)).astype("float32")
    mirrored = pixels[:, :, ::-1, :]
    one_view, other_view = _infer(classifier, pixels), _infer(classifier, mirrored)
    # Negative control: the untrained network does tell an image from its mirror...
    assert not np.allclose(one_view, other_view, atol=1e-6)
    expected = (one_view + other_view) / 2
    np.testing.assert_allclose(_infer(averaged, pixels), expected, rtol=1e-5, atol=1e-7)
    # ...the averaged one answers the same for both.
    np.testing.assert_allclose(_infer(averaged, mirrored), expected, rtol=1e-5, atol=1e-7)
    path = tmp_path / "model.keras"
    averaged.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(_infer(loaded, pixels), expected, rtol=1e-5, atol=1e-7)


def test_test_time_flip_saves_the_averaged_model_and_reports_both_accuracies() -> None:
    config = dataclasses.replace(TINY_SCRATCH, test_time_flip=True)
    splits = _tiny_splits()
    outcome = train(config, splits=splits, hooks=TrainingHooks())
    assert outcome.model.get_layer("mirror") is not None
    assert 0.0 <= outcome.details["single_view_accuracy"] <= 1.0
    probabilities = _infer(outcome.model, splits.arrays("validation").images)
    predicted = (probabilities[:, 0] > 0.5).astype(int)
    labels = splits.labels("validation")
    assert outcome.evaluation is not None
    assert outcome.evaluation["accuracy"] == pytest.approx(float((predicted == labels).mean()))
