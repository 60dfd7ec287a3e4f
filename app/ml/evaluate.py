"""Evaluation of a classifier's predictions: accuracy, per-class scores, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.ml.config import Task
from app.ml.multilabel import binary_log_loss, mean_average_precision


def class_probabilities(raw: np.ndarray, class_count: int) -> np.ndarray:
    """(n, class_count) probabilities from a model's output (one sigmoid unit for 2 classes)."""
    if class_count == 2 and raw.ndim == 2 and raw.shape[1] == 1:
        positive = raw[:, 0].astype(np.float64)
        return np.stack([1.0 - positive, positive], axis=1)
    return raw.astype(np.float64)


def evaluate_predictions(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix
    (rows: true class, columns: predicted class)."""
    predicted = probabilities.argmax(axis=1)
    count = len(classes)
    matrix = np.zeros((count, count), dtype=np.int64)
    for true, guess in zip(labels, predicted, strict=True):
        matrix[int(true), int(guess)] += 1
    per_class = {}
    for index, name in enumerate(classes):
        tp = int(matrix[index, index])
        predicted_as = int(matrix[:, index].sum())
        actual = int(matrix[index, :].sum())
        precision = tp / predicted_as if predicted_as else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": actual,
        }
    total = int(matrix.sum())
    return {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "samples": total,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "classes": classes,
    }


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the true classes (no label smoothing: comparable across runs)."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))


def validation_score(
    probabilities: np.ndarray, labels: np.ndarray, *, task: Task
) -> tuple[float, float]:
    """How models are compared on validation: (loss, score), the score being accuracy for a
    multiclass model and mAP for a multi-label one (the loss: their cross-entropies)."""
    if task is Task.MULTILABEL:
        return binary_log_loss(probabilities, labels), mean_average_precision(probabilities, labels)
    return log_loss(probabilities, labels), float(np.mean(probabilities.argmax(axis=1) == labels))


def majority_rate(labels: np.ndarray, class_count: int) -> float:
    """The accuracy of always answering the most common class."""
    if not len(labels):
        return 0.0
    return float(np.bincount(labels, minlength=class_count).max() / len(labels))


def beats_chance(accuracy: float, labels: np.ndarray, class_count: int) -> bool:
    """Whether a validation accuracy is clearly above always answering the most common class:
    by 5 points and by 1.65 binomial standard errors of that rate (a one-sided 95% test), so
    that a lucky guess on 40 images does not count."""
    base = majority_rate(labels, class_count)
    if not len(labels):
        return True  # nothing to judge by
    margin = max(0.05, 1.65 * (base * (1 - base) / len(labels)) ** 0.5)
    return bool(accuracy >= base + margin)


# The file of a version holding its evaluation image by image (GET /jobs/{id}/predictions).
PREDICTIONS_FILE = "predictions.json"


def answers_by_image(
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    *,
    images: list[str],
    thresholds: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Each evaluated image's truth and answer, in the order of `images` (their sha256): its
    true labels, the labels answered (the top class; for a multi-label model, those at or over
    their threshold), every class's probability and whether the answer is right (all labels
    right, for a multi-label model), the same rule the evaluation's totals count by."""
    rows = []
    for index, image in enumerate(images):
        row = probabilities[index]
        if thresholds is None:
            truth = [classes[int(labels[index])]]
            answered = [classes[int(row.argmax())]]
        else:
            truth = [name for j, name in enumerate(classes) if labels[index][j] > 0]
            answered = [name for j, name in enumerate(classes) if row[j] >= thresholds[j]]
        rows.append(
            {
                "image": image,
                "true_labels": truth,
                "predicted_labels": answered,
                "probabilities": [round(float(p), 6) for p in row],
                "correct": sorted(truth) == sorted(answered),
            }
        )
    return rows
