"""The plumbing every training stage shares: how a run reports to the outside world (curves,
progress, cancellation) and a `fit` that always keeps the best epoch's weights."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

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

    on_epoch_end: Callable[[EpochRecord], None] = lambda _: None
    on_progress: Callable[[dict[str, Any]], None] = lambda _: None
    should_stop: Callable[[], bool] = lambda: False


def recording(hooks: TrainingHooks, records: list[EpochRecord]) -> TrainingHooks:
    """Hooks that keep the epochs in `records` instead of reporting them (a search's trial
    runs: only the chosen one's curve is shown), passing progress and cancellation on."""
    return TrainingHooks(
        on_epoch_end=records.append, on_progress=hooks.on_progress, should_stop=hooks.should_stop
    )


class CancelledError(Exception):
    """The run was asked to stop (hooks.should_stop) between two of its steps."""


class JobCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Reports epochs and, about once a second, batches; stops training when asked to."""

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

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:  # noqa: ARG002  (Keras passes logs=)
        self._epoch = epoch
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:  # noqa: ARG002  (Keras passes logs=)
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


class ProgressCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Reports the batches of a long predict (feature extraction) about once a second: the
    job's progress and heartbeat while no epoch ends."""

    def __init__(self, hooks: TrainingHooks, detail: dict[str, Any]) -> None:
        super().__init__()
        self.hooks = hooks
        self.detail = detail
        self._last = 0.0

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:  # noqa: ARG002  (Keras passes logs=)
        now = time.perf_counter()
        if now - self._last >= HOOK_INTERVAL_SECONDS:
            self._last = now
            self.hooks.on_progress({**self.detail, "batch": batch + 1})


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class FitResult:
    best_epoch: int | None  # counted across stages; None without validation data
    best_val_loss: float | None
    epochs_run: int


def fit(
    model: keras.Model,
    x: Any,  # arrays, or a tf.data pipeline of (x, y) batches (then y is None)
    y: np.ndarray | None,
    validation: tuple[np.ndarray, np.ndarray] | None,
    *,
    epochs: int,
    batch_size: int,
    stage: str,
    epoch_offset: int,
    hooks: TrainingHooks,
    patience: int | None = None,
    class_weight: dict[int, float] | None = None,
) -> FitResult:
    """Fit and keep the best epoch's weights (lowest validation loss); stop early only after
    `patience` epochs without improvement. Raises CancelledError if the job was cancelled."""
    callback = JobCallback(stage=stage, epoch_offset=epoch_offset, epochs=epochs, hooks=hooks)
    callbacks: list[keras.callbacks.Callback] = [callback]
    keeper = None
    if validation is not None:
        keeper = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience or epochs + 1, restore_best_weights=True
        )
        callbacks.append(keeper)
    history = model.fit(
        x,
        y,
        batch_size=None if y is None else batch_size,
        epochs=epochs,
        validation_data=validation,
        class_weight=class_weight,
        callbacks=callbacks,
        verbose=0,
        shuffle=y is not None,  # a tf.data pipeline shuffles itself
    )
    if callback.cancelled:
        raise CancelledError(f"cancelled during {stage}")
    losses = history.history.get("val_loss", [])
    if keeper is None or not losses:
        return FitResult(best_epoch=None, best_val_loss=None, epochs_run=len(history.epoch))
    best = int(np.argmin(losses))
    return FitResult(
        best_epoch=epoch_offset + best + 1,
        best_val_loss=float(losses[best]),
        epochs_run=len(history.epoch),
    )
