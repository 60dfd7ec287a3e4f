"""The three methods of the small-data recipe, as pure Keras with plain-callable hooks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from app.ml import bases, builders
from app.ml.config import TrainConfig
from app.ml.data import SplitSource, balanced_class_weights
from app.ml.evaluate import class_probabilities, evaluate_predictions
from app.ml.features import feature_cache_key, load_or_compute

# The cached features of the horizontally mirrored training images.
FLIPPED_TRAIN = "train_mirrored"

# How often (seconds) batch-level progress is reported and cancellation is checked.
HOOK_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class EpochRecord:
    stage: str
    epoch: int  # 1-based, counted across stages
    loss: float | None
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    learning_rate: float | None
    seconds: float


@dataclass
class TrainingHooks:
    """How a run talks to the outside world (the service writes these to the database)."""

    on_epoch_end: Callable[[EpochRecord], None] = lambda record: None
    on_progress: Callable[[dict[str, Any]], None] = lambda detail: None
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class TrainingOutcome:
    model: keras.Model
    cancelled: bool
    evaluation: dict[str, Any] | None
    best_epoch: int | None
    details: dict[str, Any] = field(default_factory=dict)


class _JobCallback(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self, *, stage: str, epoch_offset: int, epochs: int, hooks: TrainingHooks):
        super().__init__()
        self.stage = stage
        self.epoch_offset = epoch_offset
        self.epochs = epochs
        self.hooks = hooks
        self.cancelled = False
        self._epoch_started = 0.0
        self._last_hook = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.perf_counter()
        if now - self._last_hook < HOOK_INTERVAL_SECONDS:
            return
        self._last_hook = now
        self.hooks.on_progress(
            {
                "stage": self.stage,
                "epoch": self.epoch_offset + self._epoch + 1,
                "stage_epoch": self._epoch + 1,
                "stage_epochs": self.epochs,
                "batch": batch + 1,
                "batches": self.params.get("steps"),
            }
        )
        if self.hooks.should_stop():
            self.cancelled = True
            self.model.stop_training = True  # Keras 3 checks this after every batch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        rate = self.model.optimizer.learning_rate
        record = EpochRecord(
            stage=self.stage,
            epoch=self.epoch_offset + epoch + 1,
            loss=_number(logs.get("loss")),
            accuracy=_number(logs.get("accuracy")),
            val_loss=_number(logs.get("val_loss")),
            val_accuracy=_number(logs.get("val_accuracy")),
            learning_rate=_number(keras.ops.convert_to_numpy(rate)),
            seconds=time.perf_counter() - self._epoch_started,
        )
        self.hooks.on_epoch_end(record)
        if not self.cancelled and self.hooks.should_stop():
            self.cancelled = True
            self.model.stop_training = True


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    *,
    config: TrainConfig,
    epochs: int,
    stage: str,
    epoch_offset: int,
    class_weight: dict[int, float] | None,
    hooks: TrainingHooks,
) -> tuple[_JobCallback, keras.callbacks.History, int | None]:
    job_callback = _JobCallback(stage=stage, epoch_offset=epoch_offset, epochs=epochs, hooks=hooks)
    callbacks: list[keras.callbacks.Callback] = [job_callback]
    keeper = None
    if validation is not None:
        # Always keep the best epoch's weights (by val_loss); stop early only if asked to.
        keeper = keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=config.early_stopping_patience or epochs + 1,
            restore_best_weights=True,
        )
        callbacks.append(keeper)
    history = model.fit(
        x, y, batch_size=config.batch_size, epochs=epochs, validation_data=validation,
        class_weight=class_weight, callbacks=callbacks, shuffle=True, verbose=0,
    )  # fmt: skip
    best = None
    if keeper is not None and keeper.best_weights is not None:
        best = epoch_offset + int(keeper.best_epoch) + 1
    return job_callback, history, best


def _evaluation_split(splits: SplitSource) -> str | None:
    """The test split if there is one, else validation."""
    for name in ("test", "validation"):
        if name in splits.names and len(splits.labels(name)):
            return name
    return None


def _evaluate(
    model: keras.Model,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    classes: list[str],
    split: str,
    batch: int,
) -> dict[str, Any]:
    raw = model.predict(inputs, batch_size=batch, verbose=0)
    evaluation = evaluate_predictions(labels, class_probabilities(raw, len(classes)), classes)
    return {**evaluation, "split": split}


def _evaluate_pixels(
    model: keras.Model, splits: SplitSource, split: str, *, batch: int
) -> dict[str, Any]:
    arrays = splits.arrays(split)
    return _evaluate(
        model, arrays.images, arrays.labels, classes=splits.classes, split=split, batch=batch
    )


def seed_everything(seed: int) -> None:
    """Same seed, same run on CPU: Python, NumPy and TensorFlow RNGs, deterministic ops."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


@dataclass(frozen=True)
class PretrainedSource:
    weights_dir: Path | None
    allow_download: bool
    feature_cache_dir: Path
    dataset_fingerprint: str


def train(
    config: TrainConfig,
    *,
    splits: SplitSource,
    hooks: TrainingHooks,
    pretrained: PretrainedSource | None = None,
) -> TrainingOutcome:
    """Run one method; evaluate the best epoch's weights on test (or validation) at the end."""
    seed_everything(config.seed)
    classes = splits.classes
    train_labels = splits.labels("train")
    weights = balanced_class_weights(train_labels, len(classes)) if config.balance_classes else None
    if config.method == "scratch":
        model = builders.build_scratch_model(config, class_count=len(classes))
        trainer = builders.with_augmentation(
            model, config.augmentation, image_size=config.image_size, seed=config.seed
        )
        train_split = splits.arrays("train")
        # Cosine decay to zero over the run: large steps early, fine ones at the end, which
        # settles the noisy validation curve of a small network on a small dataset.
        steps = config.epochs * math.ceil(len(train_split) / config.batch_size)
        trainer.compile(
            optimizer=keras.optimizers.Adam(
                keras.optimizers.schedules.CosineDecay(config.learning_rate, max(steps, 1))
            ),
            loss=builders.loss_for(len(classes)),
            metrics=["accuracy"],
        )
        callback, _, best = _fit(
            trainer, train_split.images, train_split.labels, _validation_arrays(splits),
            config=config, epochs=config.epochs, stage="train", epoch_offset=0,
            class_weight=weights, hooks=hooks,
        )  # fmt: skip
        outcome = TrainingOutcome(
            model=model, cancelled=callback.cancelled, evaluation=None, best_epoch=best
        )
        target = _evaluation_split(splits)
        if not outcome.cancelled and target is not None:
            outcome.evaluation = _evaluate_pixels(model, splits, target, batch=config.batch_size)
    else:
        assert pretrained is not None, "bottleneck and finetune need a pretrained base"
        outcome = _train_pretrained(
            config, splits=splits, class_weight=weights, hooks=hooks, pretrained=pretrained
        )
    if config.test_time_flip and not outcome.cancelled:
        _average_with_mirror(outcome, splits, batch=config.batch_size)
    return outcome


def _average_with_mirror(outcome: TrainingOutcome, splits: SplitSource, *, batch: int) -> None:
    """Make the flip-averaged model the one saved, and evaluate that model (on pixels: the
    bottleneck features cached for evaluation are of unmirrored images only). The one-view
    accuracy stays in the details, so the gain is visible."""
    outcome.model = builders.with_test_time_flip(outcome.model)
    if outcome.evaluation is not None:
        one_view = outcome.evaluation["accuracy"]
        outcome.evaluation = _evaluate_pixels(
            outcome.model, splits, outcome.evaluation["split"], batch=batch
        )
        outcome.details["single_view_accuracy"] = one_view


def _validation_arrays(splits: SplitSource) -> tuple[np.ndarray, np.ndarray] | None:
    if "validation" not in splits.names:
        return None
    validation = splits.arrays("validation")
    return (validation.images, validation.labels) if len(validation) else None


def _train_pretrained(
    config: TrainConfig,
    *,
    splits: SplitSource,
    class_weight: dict[int, float] | None,
    hooks: TrainingHooks,
    pretrained: PretrainedSource,
) -> TrainingOutcome:
    from models_store import file_sha256

    details: dict[str, Any] = {}
    classes = splits.classes
    spec = bases.BASES[config.base_model]
    weights = bases.resolve_weights(
        spec, weights_dir=pretrained.weights_dir, allow_download=pretrained.allow_download
    )
    base = bases.build_base(spec, image_size=config.image_size, weights=weights)
    base.trainable = False
    weights_path = bases.find_weights(spec, weights_dir=pretrained.weights_dir)
    weights_sha = file_sha256(weights_path) if weights_path else "imagenet-download"
    extractor = builders.feature_extractor(base, spec, image_size=config.image_size)

    # Augmentation cannot act on cached features, except a horizontal flip: the features of
    # the mirrored training images are computed once too, doubling what the head learns from.
    flip = config.augmentation is not None and config.augmentation.horizontal_flip

    def compute() -> dict[str, np.ndarray]:
        features = {}
        for name in splits.names:
            hooks.on_progress({"stage": "features", "split": name})
            images = splits.arrays(name).images
            features[name] = extractor.predict(images, batch_size=32, verbose=0)
            if flip and name == "train":
                hooks.on_progress({"stage": "features", "split": "train (mirrored)"})
                features[FLIPPED_TRAIN] = extractor.predict(
                    images[:, :, ::-1, :], batch_size=32, verbose=0
                )
        return features

    key = feature_cache_key(
        dataset_fingerprint=pretrained.dataset_fingerprint, base_model=spec.key,
        weights_sha256=weights_sha, image_size=config.image_size, mirrored_train=flip,
    )  # fmt: skip
    started = time.perf_counter()
    features, hit = load_or_compute(pretrained.feature_cache_dir / f"{key}.npz", compute)
    details.update(
        feature_cache_hit=hit,
        feature_cache_key=key,
        feature_seconds=round(time.perf_counter() - started, 3),
        weights=Path(weights).name if weights != "imagenet" else "imagenet (downloaded)",
    )

    head = builders.build_head(
        int(features["train"].shape[1]), class_count=len(classes), dropout=config.dropout,
        seed=config.seed,
    )  # fmt: skip
    is_bottleneck = config.method == "bottleneck"
    head_epochs = config.epochs if is_bottleneck else config.head_epochs
    head.compile(
        optimizer=keras.optimizers.Adam(
            config.learning_rate if is_bottleneck else config.head_learning_rate
        ),
        loss=builders.loss_for(len(classes)),
        metrics=["accuracy"],
    )
    has_validation = "validation" in features and len(features["validation"])
    train_features, train_labels = features["train"], splits.labels("train")
    if flip:
        train_features = np.concatenate([train_features, features[FLIPPED_TRAIN]])
        train_labels = np.concatenate([train_labels, train_labels])
    callback, _, best = _fit(
        head, train_features, train_labels,
        (features["validation"], splits.labels("validation")) if has_validation else None,
        config=config, epochs=head_epochs, stage="head", epoch_offset=0,
        class_weight=class_weight, hooks=hooks,
    )  # fmt: skip
    builders.freeze_batch_norm(base)
    target = _evaluation_split(splits)
    if callback.cancelled or is_bottleneck:
        model = builders.build_pretrained_model(base, head, spec, image_size=config.image_size)
        outcome = TrainingOutcome(
            model=model, cancelled=callback.cancelled, evaluation=None, best_epoch=best,
            details=details,
        )  # fmt: skip
        if not callback.cancelled and target is not None:
            # The head on cached features computes what the stitched model computes on pixels.
            outcome.evaluation = _evaluate(
                head, features[target], splits.labels(target), classes=classes, split=target,
                batch=config.batch_size,
            )  # fmt: skip
        return outcome

    # Fine-tune: unfreeze the top block, keep BN frozen, low learning rate, augmentation on.
    details["unfrozen_layers"] = builders.unfreeze_top(base, spec)
    model = builders.build_pretrained_model(base, head, spec, image_size=config.image_size)
    trainer = builders.with_augmentation(
        model, config.augmentation, image_size=config.image_size, seed=config.seed
    )
    trainer.compile(  # recompile: trainable flags only take effect on compile
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=builders.loss_for(len(classes)),
        metrics=["accuracy"],
    )
    train_split = splits.arrays("train")
    callback, _, best_finetune = _fit(
        trainer, train_split.images, train_split.labels, _validation_arrays(splits),
        config=config, epochs=config.epochs, stage="finetune", epoch_offset=head_epochs,
        class_weight=class_weight, hooks=hooks,
    )  # fmt: skip
    outcome = TrainingOutcome(
        model=model, cancelled=callback.cancelled, evaluation=None,
        best_epoch=best_finetune or best, details=details,
    )  # fmt: skip
    if not callback.cancelled and target is not None:
        outcome.evaluation = _evaluate_pixels(model, splits, target, batch=config.batch_size)
    return outcome
