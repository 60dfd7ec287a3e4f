"""Pure-Keras pieces of training: resizing parity, BatchNorm freeze, seeded reproducibility."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from app.ml import bases, builders
from app.ml.calibration import MIN_CALIBRATION_IMAGES, expected_calibration_error
from app.ml.config import (
    Augmentation,
    Method,
    TrainConfig,
    finetune_epochs,
    finetune_learning_rates,
    refit_affordable,
)
from app.ml.data import InMemorySplits, SplitArrays, resize_pixels
from app.ml.finetune import sampled_views
from app.ml.layers import Temperature
from app.ml.train import TrainingHooks, train

WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "weights"


def test_loader_resizes_exactly_like_the_models_resizing_layer() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(37, 53, 3)).astype("uint8")
    layer = keras.layers.Resizing(32, 32)
    expected = np.asarray(layer(pixels[None].astype("float32")))[0]
    np.testing.assert_array_equal(resize_pixels(pixels, image_size=32), expected)


def _mobilenet_base() -> tuple[keras.Model, bases.BaseSpec]:
    spec = bases.BASES[bases.BaseName.MOBILENET]
    weights = bases.find_weights(spec, weights_dir=WEIGHTS)
    assert weights is not None, f"no {spec.key} weights in {WEIGHTS}"
    return bases.build_base(spec, image_size=32, weights=str(weights)), spec


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
    head = keras.Sequential(
        [keras.Input((base.output_shape[-1],)), keras.layers.Dense(1, activation="sigmoid")]
    )
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


def test_fine_tuning_sees_each_image_once_per_epoch_in_one_of_its_views() -> None:
    count = 10
    numbers = np.arange(1, count + 1, dtype=np.float32)[:, None]
    views = [numbers, -numbers]  # an image's view: its number, or minus its number

    seen_views = set()
    first_epochs = []
    batches = sampled_views(views, numbers, batch_size=4, seed=3)
    for _ in range(4):
        pairs = [(x.numpy()[:, 0], y.numpy()[:, 0]) for x, y in batches]
        assert len(pairs) == 3
        x, y = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
        assert sorted(y) == list(range(1, count + 1))  # every image once
        np.testing.assert_array_equal(np.abs(x), y)  # in one of its own views
        seen_views |= set(np.sign(x))
        first_epochs.append(x)
    assert seen_views == {-1.0, 1.0}
    assert any(not np.array_equal(first_epochs[0], other) for other in first_epochs[1:])
    again = [x.numpy()[:, 0] for x, _ in sampled_views(views, numbers, batch_size=4, seed=3)]
    np.testing.assert_array_equal(np.concatenate(again), first_epochs[0])  # seeded


def _tiny_splits(*, test: int = 0) -> InMemorySplits:
    rng = np.random.default_rng(5)

    def split(n: int) -> SplitArrays:
        labels = np.arange(n, dtype=np.int32) % 2
        images = rng.uniform(0, 255, size=(n, 32, 32, 3)).astype("float32")
        images[labels == 1, :, :, 0] = 255.0  # a red channel the model can learn
        return SplitArrays(images=images, labels=labels)

    splits = {"train": split(16), "validation": split(8)}
    if test:
        splits["test"] = split(test)
    return InMemorySplits(splits, ["a", "b"])


@pytest.mark.parametrize("method", ["scratch", "finetune"])
def test_same_seed_same_run(method: str, tmp_path: Path) -> None:
    from app.ml.train import PretrainedSource

    config = TrainConfig(
        method=Method(method),
        image_size=32,
        epochs=2,
        batch_size=4,
        learning_rate=1e-3,
        dropout=0.3,
        seed=11,
        base_model="mobilenet",
        augmentation=Augmentation(),
        head_epochs=1,
    )
    runs = []
    for attempt in range(2):
        records: list = []
        weights = bases.find_weights(bases.BASES[bases.BaseName.MOBILENET], weights_dir=WEIGHTS)
        assert weights is not None
        source = PretrainedSource(
            weights_path=weights,
            weights_sha256="tiny-test",
            feature_cache_dir=tmp_path / f"cache{attempt}",
            dataset_fingerprint="tiny",
        )
        outcome = train(
            config,
            splits=_tiny_splits(),
            hooks=TrainingHooks(on_epoch_end=records.append),
            pretrained=source,
        )
        runs.append(([(r.loss, r.val_loss) for r in records], outcome.evaluation))
    assert runs[0] == runs[1]
    assert runs[0][1]["split"] == "validation"  # no test split: evaluated on validation


TINY_SCRATCH = TrainConfig(
    method=Method.SCRATCH,
    image_size=32,
    epochs=1,
    batch_size=4,
    learning_rate=1e-3,
    dropout=0.0,
    seed=3,
)


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


def test_loading_images_reports_progress_which_is_the_jobs_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.ml import data
    from tests.zips import image_bytes

    monkeypatch.setattr(data, "PROGRESS_INTERVAL_SECONDS", 0.0)
    items = []
    for index in range(5):
        file = f"images/{index}.png"
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / file).write_bytes(image_bytes("PNG", seed=index))
        items.append({"split": "train", "label": "ab"[index % 2], "file": file})
    reports: list[dict] = []
    splits = data.ManifestSplits(
        {"classes": ["a", "b"], "images": items},
        files=lambda _: tmp_path,
        image_size=16,
        max_pixels=10**6,
        on_progress=reports.append,
    )
    assert len(splits.arrays("train")) == 5
    assert [r["images"] for r in reports] == [0, 1, 2, 3, 4]
    assert all(r["stage"] == "loading" and r["of"] == 5 for r in reports)


def test_feature_extraction_reports_progress_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.ml import fitting

    monkeypatch.setattr(fitting, "HOOK_INTERVAL_SECONDS", 0.0)
    reports: list[dict] = []
    hooks = TrainingHooks(on_progress=reports.append)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    callback = fitting.ProgressCallback(hooks, {"stage": "features", "split": "train"})
    model.predict(np.zeros((10, 4)), batch_size=4, verbose=0, callbacks=[callback])
    assert [r["batch"] for r in reports] == [1, 2, 3]


@pytest.mark.parametrize("name", list(bases.BaseName))
def test_every_bases_top_block_starts_at_its_cached_input_and_holds_what_is_unfrozen(
    name: bases.BaseName,
) -> None:
    """Fine-tuning runs the top block alone on cached `top_input` activations: that block
    must compute exactly the base's output and contain every layer fine-tuning unfreezes."""
    spec = bases.BASES[name]
    keras.utils.set_random_seed(0)
    base = bases.build_base(spec, image_size=64, weights=None)
    pixels = np.random.default_rng(0).uniform(-1, 1, size=(2, 64, 64, 3)).astype("float32")
    both = keras.Model(base.inputs, [base.output, base.get_layer(spec.top_input).output])
    pooled, top_input = both(pixels, training=False)
    top = bases.top_block(base, spec)
    np.testing.assert_allclose(top(top_input, training=False), pooled, rtol=1e-4, atol=1e-4)
    unfrozen = builders.unfreeze_top(base, spec)
    in_top = {layer.name for layer in top._flatten_layers(include_self=False)}
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert unfrozen > 0 and trainable and trainable <= in_top


def _auto_config(**changes: object) -> TrainConfig:
    config = TrainConfig(
        method=Method.AUTO,
        image_size=32,
        epochs=1,
        batch_size=4,
        learning_rate=None,
        dropout=0.0,
        seed=5,
        base_model="mobilenet",
        head_epochs=2,
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def _auto_run(
    tmp_path: Path, config: TrainConfig, *, splits: InMemorySplits | None = None
) -> tuple[Any, list]:
    from app.ml.train import PretrainedSource

    weights = bases.find_weights(bases.BASES[bases.BaseName.MOBILENET], weights_dir=WEIGHTS)
    assert weights is not None
    source = PretrainedSource(
        weights_path=weights,
        weights_sha256="tiny-test",
        feature_cache_dir=tmp_path,
        dataset_fingerprint="tiny",
    )
    records: list = []
    outcome = train(
        config,
        splits=splits or _tiny_splits(),
        hooks=TrainingHooks(on_epoch_end=records.append),
        pretrained=source,
    )
    return outcome, records


def test_auto_tries_bottleneck_then_finetune_and_says_why_scratch_was_not_tried(
    tmp_path: Path,
) -> None:
    outcome, records = _auto_run(tmp_path, _auto_config())
    tried = {c.method: c for c in outcome.candidates}
    assert set(tried) == {Method.BOTTLENECK, Method.FINETUNE, Method.SCRATCH}
    assert "16 training images, fewer than 4000" in tried[Method.SCRATCH].skipped
    assert outcome.method in {Method.BOTTLENECK, Method.FINETUNE}
    assert outcome.reason.startswith(f"{outcome.method.value} validates better")
    for method in (Method.BOTTLENECK, Method.FINETUNE):
        assert tried[method].validation is not None and tried[method].seconds > 0
    assert [r.epoch for r in records] == list(range(1, len(records) + 1))
    assert records[-1].stage == "finetune"
    # 16 images: every learning rate tried, the one kept validated best, only its curve shown
    settings = tried[Method.FINETUNE].settings
    rates = settings["learning_rates_tried"]
    assert [r["learning_rate"] for r in rates] == [1e-4, 3e-4]
    best = max(rates, key=lambda r: (r["validation_accuracy"], -r["validation_loss"]))
    assert settings["learning_rate"] == best["learning_rate"]
    finetune_epochs = [r for r in records if r.stage == "finetune"]
    assert len(finetune_epochs) == _auto_config().epochs


def test_fine_tuning_cost_is_bounded_whatever_the_size_of_the_data() -> None:
    # epochs: as many as one try's budget pays for, 3 to 8
    assert finetune_epochs(None, images=600) == 8
    assert finetune_epochs(None, images=2000) == 6
    assert finetune_epochs(None, images=100_000) == 3
    assert finetune_epochs(20, images=2000) == 20  # the user's choice
    # learning rates: as many tries as the budget pays for, at least one
    assert finetune_learning_rates(None, images=2000, epochs=6) == [1e-4]  # cats_vs_dogs_small
    assert finetune_learning_rates(None, images=600, epochs=8) == [1e-4, 3e-4]
    assert finetune_learning_rates(None, images=1500, epochs=8) == [1e-4]
    assert finetune_learning_rates(5e-4, images=10, epochs=8) == [5e-4]  # the user's choice


def test_a_fine_tuned_model_kept_is_trained_again_with_the_validation_images(
    tmp_path: Path,
) -> None:
    splits = _tiny_splits(test=8)
    config = _auto_config(method=Method.FINETUNE, epochs=2)
    outcome, records = _auto_run(tmp_path / "refit", config, splits=splits)
    finetune = outcome.candidates[-1]
    refit = finetune.settings["refit"]
    assert refit["images"] == 16 + 8 and refit["epochs"] == 2
    assert refit["learning_rate"] == finetune.settings["learning_rate"]
    assert "trained again on the training and validation images together" in outcome.reason
    # the evaluation is the refit model's; the candidate keeps the validated model's scores
    assert outcome.evaluation["split"] == "test"
    assert outcome.evaluation["accuracy"] == refit["test"]["accuracy"]
    # ...and the refit model is the one saved: it answers the test images as evaluated
    saved = keras.ops.convert_to_numpy(
        outcome.model(splits.arrays("test").images, training=False)
    ).argmax(axis=1)
    assert np.mean(saved == splits.labels("test")) == outcome.evaluation["accuracy"]
    # the refit has no validation curve: the job's curve holds the validated epochs only
    assert [r.stage for r in records] == ["head"] * (len(records) - 2) + ["finetune"] * 2

    asked_not_to, _ = _auto_run(
        tmp_path / "asked", dataclasses.replace(config, refit_on_validation=False), splits=splits
    )
    assert "refit" not in asked_not_to.candidates[-1].settings
    without_test, _ = _auto_run(tmp_path / "no-test", config)  # validation is all it is judged on
    assert "refit" not in without_test.candidates[-1].settings


def test_a_refit_costs_at_most_one_learning_rate_try() -> None:
    assert refit_affordable(images=600 + 200, epochs=8)  # flowers_small
    assert refit_affordable(images=1500, epochs=8)
    assert not refit_affordable(images=2000 + 1000, epochs=6)  # cats_vs_dogs_small


def test_auto_trains_scratch_too_where_there_are_enough_images(tmp_path: Path) -> None:
    outcome, records = _auto_run(tmp_path, _auto_config(scratch_min_images=16))
    scratch = next(c for c in outcome.candidates if c.method is Method.SCRATCH)
    assert scratch.skipped is None and scratch.validation is not None
    assert scratch.settings["epochs"] == 30
    # its epochs are numbered after the pretrained candidates' on the job's one curve
    assert [r.epoch for r in records] == list(range(1, len(records) + 1))
    assert [r.stage for r in records][-30:] == ["train"] * 30
    assert scratch.method.value in outcome.reason


@pytest.mark.parametrize(
    ("method", "most_epochs"),
    [("scratch", 7), ("bottleneck", 7), ("finetune", 60 + 7), ("auto", 60 + 7)],
)
def test_progress_counts_only_the_stages_a_method_trains(method: str, most_epochs: int) -> None:
    config = TrainConfig(
        method=Method(method),
        image_size=32,
        epochs=7,
        batch_size=8,
        learning_rate=1e-3,
        dropout=0.5,
        seed=1,
    )
    assert config.head_epochs == 60  # the default, also where the method has no head stage
    assert config.most_epochs == most_epochs
    # epochs left unset: progress counts the most the run can train (train.py's fallbacks)
    assert dataclasses.replace(config, epochs=None).most_epochs == {
        "scratch": 0,
        "bottleneck": 60,
    }.get(method, 60 + 8)


def test_the_kept_model_is_calibrated_on_validation_and_saved_with_its_temperature(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(9)

    def split(n: int) -> SplitArrays:
        labels = np.arange(n, dtype=np.int32) % 2
        images = rng.uniform(0, 255, size=(n, 32, 32, 3)).astype("float32")
        images[labels == 1, :, :, 0] = 255.0
        return SplitArrays(images=images, labels=labels)

    splits = InMemorySplits(
        {"train": split(16), "validation": split(MIN_CALIBRATION_IMAGES), "test": split(12)},
        ["a", "b"],
    )
    outcome, _ = _auto_run(tmp_path, _auto_config(method=Method.BOTTLENECK), splits=splits)
    calibration = outcome.evaluation["calibration"]
    assert calibration["fitted_on_images"] == MIN_CALIBRATION_IMAGES
    assert calibration["split"] == "test" and calibration["bins"] == 15
    assert calibration["temperature"] > 0
    assert isinstance(outcome.model.layers[-1], Temperature)
    # the saved model answers the calibrated probabilities the evaluation is of
    saved = keras.ops.convert_to_numpy(outcome.model(splits.arrays("test").images, training=False))
    np.testing.assert_allclose(saved, outcome.probabilities["test"], atol=1e-4)
    assert np.mean(saved.argmax(axis=1) == splits.labels("test")) == outcome.evaluation["accuracy"]
    assert calibration["ece_after"] == pytest.approx(
        expected_calibration_error(outcome.probabilities["test"], splits.labels("test"))
    )

    # fewer validation images than that: left as it is, and the evaluation says so by its
    # lack of a calibration
    few, _ = _auto_run(tmp_path / "few", _auto_config(method=Method.BOTTLENECK))
    assert few.evaluation.get("calibration") is None
    assert not isinstance(few.model.layers[-1], Temperature)
