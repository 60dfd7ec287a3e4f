"""Pictures of a job for people: learning curves and the confusion matrix (matplotlib)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from app.core.errors import ConflictError
from app.db.models import EpochMetric, TrainingJob


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def curves_png(epochs: Sequence[EpochMetric], *, title: str) -> bytes:
    """Two panels, as in the tutorials: training vs validation accuracy, and loss."""
    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    numbers = [m.epoch for m in epochs]
    for axis, metric, label in (
        (accuracy_axis, "accuracy", "accuracy"),
        (loss_axis, "loss", "loss"),
    ):
        axis.plot(numbers, [getattr(m, metric) for m in epochs], "o-", label=f"training {label}")
        axis.plot(
            numbers,
            [getattr(m, f"val_{metric}") for m in epochs],
            "s-",
            label=f"validation {label}",
        )
        axis.set_xlabel("epoch")
        axis.set_title(f"Training and validation {label}")
        axis.grid(alpha=0.3)
        if numbers:
            axis.legend()
    stages = sorted({m.stage for m in epochs})
    if len(stages) > 1:  # mark where fine-tuning starts
        first_finetune = min(m.epoch for m in epochs if m.stage == "finetune")
        for axis in (accuracy_axis, loss_axis):
            axis.axvline(first_finetune - 0.5, color="gray", linestyle="--")
    if not numbers:
        accuracy_axis.text(0.5, 0.5, "no epoch finished yet", ha="center", va="center")
    figure.suptitle(title)
    return _png(figure)


def confusion_png(job: TrainingJob) -> bytes:
    """The confusion matrix of the job's evaluation (rows: true class, columns: predicted)."""
    evaluation = (job.result or {}).get("evaluation")
    if not evaluation:
        raise ConflictError(f"job {job.id} has no evaluation (status {job.status})")
    if evaluation.get("task") == "multilabel":
        raise ConflictError(
            f"job {job.id} trained a multi-label model, which has no confusion matrix: its "
            "evaluation lists each label's precision, recall, F1 and average precision"
        )
    classes = evaluation["classes"]
    matrix = evaluation["confusion_matrix"]
    size = max(4.0, 0.6 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            color = "white" if value > peak / 2 else "black"
            axis.text(j, i, str(value), ha="center", va="center", color=color)
    axis.set_title(f"{evaluation['split']} accuracy {evaluation['accuracy']:.3f}")
    return _png(figure)
