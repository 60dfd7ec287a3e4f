"""The head stage: a classifier on a frozen base's pooled features, chosen on validation.

With a few hundred images, the head is where small data is won or lost: a softmax layer on
standardised features with the right L2 strength is a strong default; the tutorial's
Dense(256)/dropout head is tried beside it. Each trial is scored on the validation features
(answers averaged over the image and its mirror where both are there) and the best kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from app.ml import builders
from app.ml.config import HeadKind, Task
from app.ml.evaluate import validation_score
from app.ml.fitting import EpochRecord, TrainingHooks, fit, recording

# L2 strengths tried for the linear head (penalty on the mean loss; features standardised).
L2_GRID = (1e-4, 1e-3, 1e-2)
HEAD_PATIENCE = 8
HEAD_BATCH = 128


@dataclass(frozen=True)
class HeadSpec:
    kind: HeadKind
    l2: float = 0.0
    dropout: float = 0.0

    def describe(self) -> dict[str, Any]:
        if self.kind is HeadKind.LINEAR:
            return {"head": "linear", "l2": self.l2}
        return {"head": "dense", "units": 256, "dropout": self.dropout}


@dataclass
class HeadData:
    """Pooled features and labels of one run: train (with its mirrored copy when it trains
    on both), and validation/test as one or two views whose answers are averaged."""

    train_x: np.ndarray
    train_y: np.ndarray
    validation: list[np.ndarray] = field(default_factory=list)  # views
    validation_y: np.ndarray | None = None
    test: list[np.ndarray] = field(default_factory=list)
    test_y: np.ndarray | None = None


# A feature whose training values (nearly) never vary is centred, not scaled: dividing by its
# spread (Keras floors it at 1e-7) turned a validation image's small difference there into
# logits of 1e4, and a validation loss of 8000 (MobileNetV2 at 32 px on 20 photo pairs).
MIN_FEATURE_VARIANCE = 1e-8


def standardisation(train_x: np.ndarray) -> keras.layers.Normalization:
    """Each feature minus its training mean, divided by its training standard deviation
    (left unscaled where that is about zero)."""
    scale = keras.layers.Normalization(name="standardise")
    scale.adapt(train_x)
    variance = keras.ops.convert_to_numpy(scale.variance).reshape(-1)
    if np.all(variance >= MIN_FEATURE_VARIANCE):
        return scale
    return keras.layers.Normalization(
        mean=keras.ops.convert_to_numpy(scale.mean).reshape(-1),
        variance=np.where(variance < MIN_FEATURE_VARIANCE, 1.0, variance),
        name="standardise",
    )


def build_head(
    spec: HeadSpec,
    *,
    feature_dim: int,
    class_count: int,
    train_x: np.ndarray,
    seed: int,
    task: Task = Task.MULTICLASS,
) -> keras.Model:
    """Standardisation (statistics of the training features) then the classifier; softmax
    output (a sigmoid per label: multilabel) in float32 whatever the dtype policy."""
    inputs = keras.Input(shape=(feature_dim,), name="features")
    x = standardisation(train_x)(inputs)
    if spec.kind is HeadKind.DENSE:
        x = keras.layers.Dense(256, activation="relu", name="hidden")(x)
        x = keras.layers.Dropout(spec.dropout, seed=seed)(x)
    outputs = keras.layers.Dense(
        class_count,
        activation="sigmoid" if task is Task.MULTILABEL else "softmax",
        dtype="float32",
        name="predictions",
        kernel_regularizer=keras.regularizers.L2(spec.l2) if spec.l2 else None,
    )(x)
    return keras.Model(inputs, outputs, name=builders.HEAD_LAYER)


def averaged(model: keras.Model, views: list[np.ndarray], batch: int = 512) -> np.ndarray:
    """The model's probabilities averaged over the views of the same images. The model is
    called on chunks directly: `model.predict` builds a new function for every model it is
    given (a head's 1000 validation images: 70-130 ms that way, 13-21 ms this way; a fine-tuned
    top block's: 1.4 against 1.2 s), and a job scores about a dozen models."""
    outputs = [
        np.concatenate(
            [
                keras.ops.convert_to_numpy(model(view[start : start + batch], training=False))
                for start in range(0, len(view), batch)
            ]
        )
        for view in views
    ]
    mean: np.ndarray = np.mean(outputs, axis=0).astype(np.float64)
    return mean


@dataclass
class HeadTrial:
    spec: HeadSpec
    model: keras.Model
    validation_loss: float
    validation_score: float  # accuracy, or mAP (evaluate.validation_score)
    best_epoch: int | None
    epochs: list[EpochRecord]


def train_head(
    spec: HeadSpec,
    data: HeadData,
    *,
    class_count: int,
    label_smoothing: float,
    epochs: int,
    learning_rate: float,
    seed: int,
    hooks: TrainingHooks,
    class_weight: dict[int, float] | None = None,
    task: Task = Task.MULTICLASS,
    label_weights: tuple[np.ndarray, np.ndarray] | None = None,
) -> HeadTrial:
    """Fit one head (best epoch by validation loss) and score it on validation; its epochs
    are kept in the trial, not reported."""
    keras.utils.set_random_seed(seed)
    model = build_head(
        spec,
        feature_dim=data.train_x.shape[1],
        class_count=class_count,
        train_x=data.train_x,
        seed=seed,
        task=task,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=builders.training_loss(
            task, label_smoothing=label_smoothing, label_weights=label_weights
        ),
        metrics=builders.epoch_metrics(task),
    )
    validation = None
    if data.validation_y is not None and data.validation:
        validation = (data.validation[0], builders.targets(data.validation_y, class_count, task))
    records: list[EpochRecord] = []
    result = fit(
        model,
        data.train_x,
        builders.targets(data.train_y, class_count, task),
        validation,
        epochs=epochs,
        batch_size=min(HEAD_BATCH, len(data.train_x)),
        stage="head",
        epoch_offset=0,
        hooks=recording(hooks, records),
        patience=HEAD_PATIENCE,
        class_weight=class_weight,
    )
    loss, score = math.inf, 0.0
    if data.validation_y is not None and data.validation:
        probabilities = averaged(model, data.validation)
        loss, score = validation_score(probabilities, data.validation_y, task=task)
    return HeadTrial(
        spec=spec,
        model=model,
        validation_loss=loss,
        validation_score=score,
        best_epoch=result.best_epoch,
        epochs=records,
    )


def head_specs(kind: HeadKind, *, dropout: float) -> list[HeadSpec]:
    """The heads a job tries: the linear head at each L2 strength and/or the dense head."""
    linear = [HeadSpec(HeadKind.LINEAR, l2=l2) for l2 in L2_GRID]
    dense = [HeadSpec(HeadKind.DENSE, dropout=dropout)]
    return {HeadKind.LINEAR: linear, HeadKind.DENSE: dense}.get(kind, linear + dense)


def choose_head(
    data: HeadData,
    *,
    kind: HeadKind,
    class_count: int,
    label_smoothing: float,
    dropout: float,
    epochs: int,
    learning_rate: float,
    seed: int,
    hooks: TrainingHooks,
    class_weight: dict[int, float] | None = None,
    task: Task = Task.MULTICLASS,
    label_weights: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[HeadTrial, list[HeadTrial]]:
    """Every head of `kind` trained; the one with the lowest validation loss kept (the first,
    simplest one on a tie). Its epochs are reported as the job's "head" curve."""
    trials = []
    for spec in head_specs(kind, dropout=dropout):
        trials.append(
            train_head(
                spec,
                data,
                class_count=class_count,
                label_smoothing=label_smoothing,
                epochs=epochs,
                learning_rate=learning_rate,
                seed=seed,
                hooks=hooks,
                class_weight=class_weight,
                task=task,
                label_weights=label_weights,
            )
        )
        hooks.on_progress({"stage": "head", "tried": len(trials)})
    best = min(trials, key=lambda trial: trial.validation_loss)
    for record in best.epochs:
        hooks.on_epoch_end(record)
    return best, trials
