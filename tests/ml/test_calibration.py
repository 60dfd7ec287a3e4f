"""Temperature scaling and the expected calibration error, and the layer that saves it."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from app.ml import builders
from app.ml.calibration import (
    expected_calibration_error,
    fit_temperature,
    tempered,
)
from app.ml.evaluate import log_loss
from app.ml.layers import Temperature


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return result


def _overconfident(n: int = 4000, classes: int = 4, factor: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z), and a model that answers softmax(factor * z): its right
    temperature is `factor`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, (n, classes))
    truth = _softmax(logits)
    labels = np.array([rng.choice(classes, p=row) for row in truth])
    return _softmax(factor * logits), labels


def test_the_fitted_temperature_undoes_overconfidence_and_lowers_the_error() -> None:
    answers, labels = _overconfident()
    temperature = fit_temperature(answers, labels)
    assert temperature == pytest.approx(3.0, rel=0.08)
    calibrated = tempered(answers, temperature)
    before = expected_calibration_error(answers, labels)
    after = expected_calibration_error(calibrated, labels)
    assert before > 0.1 and after < 0.03
    assert log_loss(calibrated, labels) < log_loss(answers, labels)
    # no answer changes its class
    assert (calibrated.argmax(axis=1) == answers.argmax(axis=1)).all()
    # a timid model is sharpened (T < 1)
    timid, timid_labels = _overconfident(factor=0.5, seed=1)
    assert fit_temperature(timid, timid_labels) == pytest.approx(0.5, rel=0.08)


def test_a_validation_set_answered_all_right_does_not_make_every_answer_certain() -> None:
    # A timid model (label smoothing) that is right on all 120 validation images: the loss
    # alone would send T to 0; the temperature stops where the mean confidence is 121/122.
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 120)
    answers = np.full((120, 3), 0.05)
    answers[np.arange(120), labels] = 0.9
    answers += rng.uniform(0, 0.01, answers.shape)
    answers /= answers.sum(axis=1, keepdims=True)
    temperature = fit_temperature(answers, labels)
    confidence = tempered(answers, temperature).max(axis=1).mean()
    assert confidence == pytest.approx(121 / 122, abs=1e-6)
    assert 0.05 < temperature < 1.0  # sharper than the timid model, short of certainty


def test_the_expected_calibration_error_of_known_cases() -> None:
    # every answer 0.9 sure, half of them right: 0.4
    answers = np.array([[0.9, 0.1]] * 10)
    labels = np.array([0, 1] * 5)
    assert expected_calibration_error(answers, labels) == pytest.approx(0.4)
    # right as often as it says, in each bin: 0
    answers = np.array([[0.75, 0.25]] * 4 + [[1.0, 0.0]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 0])
    assert expected_calibration_error(answers, labels) == pytest.approx(0.0)


@pytest.mark.parametrize("units", [3, 1])
def test_the_saved_layer_answers_as_the_numbers_say_and_survives_saving(
    units: int, tmp_path: Path
) -> None:
    inputs = keras.Input(shape=(5,))
    activation = "softmax" if units > 1 else "sigmoid"
    classifier = keras.Model(inputs, keras.layers.Dense(units, activation=activation)(inputs))
    calibrated = builders.with_temperature(classifier, 2.5)
    assert isinstance(calibrated.layers[-1], Temperature)
    x = np.random.default_rng(2).normal(0, 3, (16, 5)).astype("float32")
    raw = classifier.predict(x, verbose=0)
    answered = calibrated.predict(x, verbose=0)
    two_columns = (lambda p: np.concatenate([1 - p, p], axis=1)) if units == 1 else (lambda p: p)
    np.testing.assert_allclose(
        two_columns(answered), tempered(two_columns(raw).astype(np.float64), 2.5), atol=1e-5
    )
    calibrated.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), answered, atol=1e-6)
