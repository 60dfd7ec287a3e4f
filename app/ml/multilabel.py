"""Multi-label models' numbers: each label is a yes/no question with its own sigmoid, so it gets
its own decision threshold (the best-F1 rule on validation, Rekognition's "assumed threshold"),
its own calibration (Platt scaling) and its own scores; the evaluation sums them up as mAP,
micro and macro F1, exact match and mean Jaccard.

Labels are (images, labels) arrays of 0/1; probabilities the same shape. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.ml.calibration import ECE_BINS, PROBABILITY_FLOOR, binned_calibration_error

# A label validation never shows (or shows on every image) has no best-F1 point: this.
DEFAULT_THRESHOLD = 0.5
_NEWTON_STEPS = 50


def binary_log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy over every image and label (no label smoothing)."""
    p = np.clip(probabilities, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p)))


def _ranked(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At each distinct score, highest first: that score and the true and false positives of
    answering yes at or above it."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], positives[order].astype(np.float64)
    # the last position of each run of equal scores: ties are decided together
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    true_positives = np.cumsum(hits)[last]
    false_positives = (last + 1) - true_positives
    return sorted_scores[last], true_positives, false_positives


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """The area under the precision-recall steps (as scikit-learn's average_precision_score):
    the mean precision at each recall step. None where no image has the label."""
    total = float(positives.sum())
    if not total:
        return None
    _, tp, fp = _ranked(scores, positives)
    precision = tp / (tp + fp)
    recall_steps = np.diff(np.r_[0.0, tp / total])
    return float(np.sum(recall_steps * precision))


def best_f1_threshold(scores: np.ndarray, positives: np.ndarray) -> float:
    """The threshold of one label with the best F1 on these images: halfway between the lowest
    score it answers yes to and the next one below (a new image a little below the lowest
    positive still counts). DEFAULT_THRESHOLD where no image has the label."""
    total = float(positives.sum())
    if not total or total == len(positives):
        return DEFAULT_THRESHOLD
    values, tp, fp = _ranked(scores, positives)
    f1 = 2 * tp / (tp + fp + total)
    best = int(np.argmax(f1))  # the first: the highest threshold of equal F1
    below = values[best + 1] if best + 1 < len(values) else 0.0
    return float((values[best] + below) / 2)


def best_f1_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each label's best-F1 threshold (best_f1_threshold), fitted on validation."""
    return np.array(
        [best_f1_threshold(probabilities[:, j], labels[:, j]) for j in range(labels.shape[1])],
        dtype=np.float64,
    )


def _logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    result: np.ndarray = np.log(p) - np.log1p(-p)
    return result


def platt_scaled(
    probabilities: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray
) -> np.ndarray:
    """sigmoid(a * logit(p) + b) per label: what the saved model's PlattScaling layer does."""
    result: np.ndarray = 1.0 / (1.0 + np.exp(-(_logit(probabilities) * slopes + intercepts)))
    return result


def _fit_one_platt(logits: np.ndarray, positives: np.ndarray) -> tuple[float, float]:
    """Platt's (1999) fit for one label: a logistic regression on the logit, with his targets
    (N+ + 1) / (N+ + 2) and 1 / (N- + 2) in place of 1 and 0, so that a label every validation
    image gets right is not sent towards certainty. Newton's method, halving a step that does
    not lower the loss."""
    count_positive = float(positives.sum())
    count_negative = float(len(positives) - count_positive)
    targets = np.where(
        positives > 0, (count_positive + 1) / (count_positive + 2), 1 / (count_negative + 2)
    )

    def loss(a: float, b: float) -> float:
        z = a * logits + b
        return float(np.mean(np.logaddexp(0.0, z) - targets * z))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(_NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(a * logits + b)))
        residual, weight = p - targets, np.maximum(p * (1 - p), 1e-12)
        gradient = np.array([np.mean(residual * logits), np.mean(residual)])
        hessian = np.array(
            [
                [np.mean(weight * logits * logits) + 1e-9, np.mean(weight * logits)],
                [np.mean(weight * logits), np.mean(weight) + 1e-9],
            ]
        )
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-6:
            candidate = loss(a - scale * step[0], b - scale * step[1])
            if candidate <= current:
                break
            scale /= 2
        else:
            break
        a, b = a - scale * float(step[0]), b - scale * float(step[1])
        if current - candidate < 1e-12:
            current = candidate
            break
        current = candidate
    return a, b


def fit_platt(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each label's Platt scaling (slope, intercept on the logit) fitted on validation; a label
    that validation shows only one answer of is left as it is (1, 0)."""
    slopes, intercepts = np.ones(labels.shape[1]), np.zeros(labels.shape[1])
    logits = _logit(probabilities)
    for j in range(labels.shape[1]):
        positives = float(labels[:, j].sum())
        if 0 < positives < len(labels):
            slopes[j], intercepts[j] = _fit_one_platt(logits[:, j], labels[:, j])
    return slopes, intercepts


def multilabel_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS
) -> float:
    """Expected calibration error of every (image, label) answer: each probability against
    how often the label is there, in equal-width bins of probability."""
    return binned_calibration_error(probabilities.ravel(), labels.ravel() > 0, bins=bins)


def mean_average_precision(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean of each label's average precision, over the labels the images have."""
    values = [
        ap
        for j in range(labels.shape[1])
        if (ap := average_precision(probabilities[:, j], labels[:, j])) is not None
    ]
    return float(np.mean(values)) if values else 0.0


def _f1(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def evaluate_multilabel(
    labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Per-label precision, recall, F1 (at its threshold) and average precision; mAP, micro
    and macro F1, exact match (every label right: `accuracy`) and mean Jaccard."""
    truth = labels > 0
    answered = probabilities >= thresholds
    per_label: dict[str, dict[str, Any]] = {}
    macro: list[float] = []
    for j, name in enumerate(classes):
        tp = float(np.sum(answered[:, j] & truth[:, j]))
        fp = float(np.sum(answered[:, j] & ~truth[:, j]))
        fn = float(np.sum(~answered[:, j] & truth[:, j]))
        precision, recall, f1 = _f1(tp, fp, fn)
        support = int(truth[:, j].sum())
        if support:
            macro.append(f1)
        per_label[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
            "average_precision": average_precision(probabilities[:, j], truth[:, j]),
            "threshold": float(thresholds[j]),
        }
    _, _, micro = _f1(
        float(np.sum(answered & truth)),
        float(np.sum(answered & ~truth)),
        float(np.sum(~answered & truth)),
    )
    union = np.sum(answered | truth, axis=1)
    jaccard = np.where(union > 0, np.sum(answered & truth, axis=1) / np.maximum(union, 1), 1.0)
    exact = float(np.mean(np.all(answered == truth, axis=1))) if len(truth) else 0.0
    return {
        "task": "multilabel",
        "accuracy": exact,
        "exact_match": exact,
        "samples": len(truth),
        "per_class": per_label,
        "confusion_matrix": [],
        "classes": classes,
        "mean_average_precision": mean_average_precision(probabilities, labels),
        "micro_f1": micro,
        "macro_f1": float(np.mean(macro)) if macro else 0.0,
        "mean_jaccard": float(np.mean(jaccard)) if len(truth) else 0.0,
    }


def beats_chance(map_score: float, labels: np.ndarray) -> bool:
    """Whether a validation mAP is clearly above a ranking by chance, whose average precision
    is about each label's share of the images: by 5 points over their mean."""
    prevalence = labels.mean(axis=0)
    present = prevalence[prevalence > 0]
    if not len(present):
        return True  # nothing to judge by
    return bool(map_score >= float(present.mean()) + 0.05)


@dataclass(frozen=True)
class PlattCalibration:
    """What calibrating a multi-label model found: each label's slope and intercept, and the
    test error before and after."""

    slopes: np.ndarray
    intercepts: np.ndarray
    classes: list[str]
    fitted_on: int  # validation images
    split: str
    ece_before: float
    ece_after: float

    def describe(self) -> dict[str, Any]:
        return {
            "method": "platt",
            "per_label": {
                name: {"slope": float(a), "intercept": float(b)}
                for name, a, b in zip(self.classes, self.slopes, self.intercepts, strict=True)
            },
            "fitted_on_images": self.fitted_on,
            "bins": ECE_BINS,
            "split": self.split,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
        }
