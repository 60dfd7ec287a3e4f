"""The fine-tune stage: the base's top block and the head trained together at a low learning
rate, on the cached activations that enter the top block.

Running the top block alone (MobileNetV2: blocks 13-16, about a fifth of the base's compute)
instead of the whole base makes an epoch several times cheaper; augmentation comes from the
mirrored images' activations (each epoch shows every image once, as itself or its mirror
image) and small random shifts of the feature maps. BatchNormalization
layers stay frozen. The starting point (the chosen head on the frozen base) competes as
"epoch 0": if no epoch beats it on validation, fine-tuning is undone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from app.ml import bases, builders
from app.ml.config import Task
from app.ml.evaluate import validation_score
from app.ml.fitting import TrainingHooks, fit
from app.ml.heads import averaged

# Fraction of the feature map's size by which it is randomly shifted while fine-tuning.
FEATURE_MAP_SHIFT = 0.1
WARMUP_EPOCHS = 1


@dataclass
class TopData:
    """Cached top-block inputs: train, validation and test, each as its views (the images,
    and their mirror images where those were extracted)."""

    train: list[np.ndarray]
    train_y: np.ndarray
    validation: list[np.ndarray]
    validation_y: np.ndarray
    test: list[np.ndarray]
    test_y: np.ndarray | None


def sampled_views(
    views: list[np.ndarray], targets: np.ndarray, *, batch_size: int, seed: int
) -> Any:
    """A tf.data pipeline of training batches in which every image appears once per epoch,
    in one of its views picked at random (a new pick and order each epoch): the mirror images
    still augment the data, but an epoch costs one pass over the images, not one per view.
    In the graph, not a Python generator: fed from Python (keras.utils.PyDataset) the same
    epochs took 5 or 10 s unevenly on 2 cores, against 5 s steadily here."""
    import tensorflow as tf

    stacked = tf.constant(np.stack(views))
    labels = tf.constant(targets)
    order = tf.data.Dataset.range(len(targets)).shuffle(
        len(targets), seed=seed, reshuffle_each_iteration=True
    )
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def gather(index: Any, draw: Any) -> tuple[Any, Any]:
        view_and_image = tf.stack([draw % len(views), index], axis=1)
        return tf.cast(tf.gather_nd(stacked, view_and_image), tf.float32), tf.gather(labels, index)

    return tf.data.Dataset.zip((order, draws)).batch(batch_size).map(gather).prefetch(1)


@dataclass(frozen=True)
class FinetuneResult:
    improved: bool  # False: no epoch beat the starting point, which was restored
    best_epoch: int | None
    validation_loss: float
    validation_score: float  # accuracy, or mAP (evaluate.validation_score)
    validation_probabilities: np.ndarray
    test_probabilities: np.ndarray | None


def _schedule(learning_rate: float, *, epochs: int, steps_per_epoch: int) -> object:
    """A linear warm-up over the first epoch (the new head's gradients are large at first),
    then cosine decay to zero."""
    warmup = min(WARMUP_EPOCHS, max(epochs - 1, 0)) * steps_per_epoch
    total = max(epochs * steps_per_epoch, 1)
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else learning_rate,
        max(total - warmup, 1),
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )


@dataclass(frozen=True)
class TopTraining:
    """How the top block trains: fine-tuning and its refit alike."""

    class_count: int
    epochs: int
    learning_rate: float
    batch_size: int
    label_smoothing: float
    seed: int
    class_weight: dict[int, float] | None = None
    task: Task = Task.MULTICLASS
    label_weights: tuple[np.ndarray, np.ndarray] | None = None

    def targets(self, labels: np.ndarray) -> np.ndarray:
        return builders.targets(labels, self.class_count, self.task)


def _trainer(
    base: keras.Model,
    spec: bases.BaseSpec,
    head: keras.Model,
    train: list[np.ndarray],
    train_y: np.ndarray,
    training: TopTraining,
) -> tuple[keras.Model, Any]:
    """The top block (unfrozen) and `head` behind a random shift of the feature maps, compiled
    with the warm-up and cosine schedule; and its training batches."""
    keras.utils.set_random_seed(training.seed)
    top = bases.top_block(base, spec)
    builders.unfreeze_top(base, spec)
    inputs = keras.Input(shape=train[0].shape[1:], name="top_inputs")
    shifted = keras.layers.RandomTranslation(
        FEATURE_MAP_SHIFT,
        FEATURE_MAP_SHIFT,
        fill_mode="reflect",
        interpolation="nearest",
        seed=training.seed,
    )(inputs)
    model = keras.Model(inputs, head(top(shifted)), name="finetune")
    batches = sampled_views(
        train,
        training.targets(train_y),
        batch_size=training.batch_size,
        seed=training.seed,
    )
    steps = math.ceil(len(train_y) / training.batch_size)
    model.compile(  # compiled after the trainable flags changed: they take effect now
        optimizer=keras.optimizers.Adam(
            _schedule(training.learning_rate, epochs=training.epochs, steps_per_epoch=steps)
        ),
        loss=builders.training_loss(
            training.task,
            label_smoothing=training.label_smoothing,
            label_weights=training.label_weights,
        ),
        metrics=builders.epoch_metrics(training.task),
    )
    return model, batches


def refit_top(
    base: keras.Model,
    spec: bases.BaseSpec,
    head: keras.Model,
    data: TopData,
    training: TopTraining,
    *,
    hooks: TrainingHooks,
) -> np.ndarray | None:
    """Fine-tune again, from the weights `base` and `head` hold, on the training and the
    validation images together, with the learning rate and epochs that validation chose: all
    `epochs` are trained (nothing is left to stop early on). Returns the test probabilities."""
    # Validation images have one view (unless the model flips at test time): it stands in
    # for each training view, so every image is seen once per epoch as before.
    train = [
        np.concatenate([view, data.validation[index % len(data.validation)]])
        for index, view in enumerate(data.train)
    ]
    train_y = np.concatenate([data.train_y, data.validation_y])
    model, batches = _trainer(base, spec, head, train, train_y, training)
    fit(
        model,
        batches,
        None,
        None,
        epochs=training.epochs,
        batch_size=training.batch_size,
        stage="refit",
        epoch_offset=0,
        hooks=hooks,
        class_weight=training.class_weight,
    )
    if not data.test:
        return None
    return averaged(model, [view.astype(np.float32) for view in data.test])


def finetune_top(
    base: keras.Model,
    spec: bases.BaseSpec,
    head: keras.Model,
    data: TopData,
    training: TopTraining,
    *,
    hooks: TrainingHooks,
    epoch_offset: int,
) -> FinetuneResult:
    """Fine-tune `base`'s top block with `head` (both changed in place)."""
    model, batches = _trainer(base, spec, head, data.train, data.train_y, training)
    validation_views = [view.astype(np.float32) for view in data.validation]

    def score() -> tuple[float, float, np.ndarray]:
        probabilities = averaged(model, validation_views, batch=128)
        loss, value = validation_score(probabilities, data.validation_y, task=training.task)
        return loss, value, probabilities

    start_loss, start_score, start_probabilities = score()
    start_weights = [w.copy() for w in model.get_weights()]
    result = fit(
        model,
        batches,
        None,
        (validation_views[0], training.targets(data.validation_y)),
        epochs=training.epochs,
        batch_size=training.batch_size,
        stage="finetune",
        epoch_offset=epoch_offset,
        hooks=hooks,
        class_weight=training.class_weight,
    )
    loss, value, probabilities = score()
    improved = loss < start_loss
    if not improved:
        model.set_weights(start_weights)
        loss, value, probabilities = start_loss, start_score, start_probabilities
    test_probabilities = None
    if data.test:
        test_probabilities = averaged(model, [view.astype(np.float32) for view in data.test])
    return FinetuneResult(
        improved=improved,
        best_epoch=result.best_epoch if improved else None,
        validation_loss=loss,
        validation_score=value,
        validation_probabilities=probabilities,
        test_probabilities=test_probabilities,
    )
