"""Probabilities that mean what they say: temperature scaling fitted on the validation split
(Guo et al., "On Calibration of Modern Neural Networks", 2017) and the expected calibration
error that checks it on the test split.

One temperature T divides the log-probabilities before the softmax: T > 1 softens an
over-confident model, T < 1 sharpens a timid one, and no answer changes its class (the order
of the probabilities is kept), so accuracy is exactly what it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Probabilities are clipped to this before their log is taken (here and in the saved
# models' calibration layers, app.ml.layers: NumPy and Keras alike).
PROBABILITY_FLOOR = 1e-12
ECE_BINS = 15
# Fewer validation images than this, and one temperature is a guess: the model is left as is.
MIN_CALIBRATION_IMAGES = 20
# The search range of 1 / T; the negative log-likelihood is convex in it.
INVERSE_TEMPERATURE_RANGE = (0.05, 20.0)
_SEARCH_STEPS = 80


def tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) of (n, classes) probabilities."""
    logits = np.log(np.clip(probabilities, PROBABILITY_FLOOR, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exponentials = np.exp(logits)
    result: np.ndarray = exponentials / exponentials.sum(axis=1, keepdims=True)
    return result


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the negative log-likelihood of `labels`, but never more confident
    on the validation images, on average, than it was right there; where every one was right,
    than Laplace's (n + 1) / (n + 2). Where the answers are not all right the loss's minimum is
    about that already (a calibrated model's mean confidence is its accuracy), so the bound
    moves T little; where they all are, minimising the loss alone sends T towards 0 and every
    answer, wrong ones to come included, towards certainty."""
    fitted = _minimum_loss_temperature(probabilities, labels)
    right = int(np.sum(probabilities.argmax(axis=1) == labels))
    count = len(labels)
    ceiling = right / count if right < count else (count + 1) / (count + 2)
    if _mean_confidence(probabilities, fitted) <= ceiling:
        return fitted
    # The mean confidence falls as T grows: bisect on log T up to the largest T searched.
    low, high = math.log(fitted), -math.log(INVERSE_TEMPERATURE_RANGE[0])
    for _ in range(_SEARCH_STEPS):
        middle = (low + high) / 2
        if _mean_confidence(probabilities, math.exp(middle)) > ceiling:
            low = middle
        else:
            high = middle
    return math.exp(high)


def _mean_confidence(probabilities: np.ndarray, temperature: float) -> float:
    return float(tempered(probabilities, temperature).max(axis=1).mean())


def _minimum_loss_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Golden-section search on 1 / T, where the loss is convex: deterministic, no optimiser
    state."""
    low, high = INVERSE_TEMPERATURE_RANGE
    ratio = (math.sqrt(5) - 1) / 2

    log_probabilities = np.log(np.clip(probabilities, PROBABILITY_FLOOR, 1.0))

    def loss(inverse: float) -> float:
        """Mean -log softmax(inverse * log p)[label], unclipped: convex in `inverse`."""
        scaled = log_probabilities * inverse
        top = scaled.max(axis=1, keepdims=True)
        log_sum = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
        return float(np.mean(log_sum - scaled[np.arange(len(labels)), labels]))

    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    loss_c, loss_d = loss(c), loss(d)
    for _ in range(_SEARCH_STEPS):
        if loss_c <= loss_d:
            b, d, loss_d = d, c, loss_c
            c = b - ratio * (b - a)
            loss_c = loss(c)
        else:
            a, c, loss_c = c, d, loss_d
            d = a + ratio * (b - a)
            loss_d = loss(d)
    return 1.0 / ((a + b) / 2)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS
) -> float:
    """The top answer's confidence against how often it is right, in `bins` equal-width bins
    of confidence, weighted by the share of images in each."""
    return binned_calibration_error(
        probabilities.max(axis=1), probabilities.argmax(axis=1) == labels, bins=bins
    )


def binned_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, *, bins: int = ECE_BINS
) -> float:
    """Confidences against how often their answers were right, in `bins` equal-width bins,
    each bin's gap weighted by its share of the answers."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for index in range(bins):
        lower, upper = edges[index], edges[index + 1]
        inside = (confidence > lower) & (confidence <= upper)
        if index == 0:
            inside |= confidence == 0.0
        if inside.any():
            gap = abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
            error += gap * float(inside.mean())
    return error


@dataclass(frozen=True)
class Calibration:
    """What calibrating a model found: its temperature and the test error before and after."""

    temperature: float
    fitted_on: int  # validation images
    split: str  # where the errors were measured
    ece_before: float
    ece_after: float

    def describe(self) -> dict[str, Any]:
        return {
            "method": "temperature",
            "temperature": self.temperature,
            "fitted_on_images": self.fitted_on,
            "bins": ECE_BINS,
            "split": self.split,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
        }
