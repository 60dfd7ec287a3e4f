"""Multi-label models: the numbers (average precision, best-F1 thresholds, Platt scaling, the
evaluation), and models trained on real side-by-side photo pairs by every method, their
thresholds stored with the version and applied by /predict."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.ml import bases
from app.ml.config import Method, TrainConfig
from app.ml.multilabel import (
    DEFAULT_THRESHOLD,
    average_precision,
    best_f1_threshold,
    evaluate_multilabel,
    fit_platt,
    multilabel_calibration_error,
    platt_scaled,
)
from app.ml.serving import load_classifier, write_model_files
from benchmarks.multilabel_sets import MultilabelSet, build, read_labels
from tests.models import train_on_photos

SIZE = 128
SPEC = bases.BASES[bases.BaseName.MOBILENET]


# --- the numbers --------------------------------------------------------------------------


def test_average_precision_is_the_mean_precision_at_each_recall_step() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    positives = np.array([1, 0, 1, 0, 1])
    # positives ranked 1st, 3rd and 5th: precisions 1, 2/3 and 3/5
    assert average_precision(scores, positives) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert average_precision(scores, np.zeros(5)) is None
    # a tie is decided together: two images at 0.8, one of them positive
    tied = average_precision(np.array([0.8, 0.8, 0.1]), np.array([0, 1, 0]))
    assert tied == pytest.approx(0.5)


def test_the_best_f1_threshold_falls_between_the_scores_it_separates() -> None:
    scores = np.array([0.95, 0.9, 0.6, 0.4, 0.3, 0.1])
    positives = np.array([1, 1, 1, 0, 0, 0])
    assert best_f1_threshold(scores, positives) == pytest.approx(0.5)
    # a positive scored low is not worth the two negatives above it
    noisy = np.array([1, 1, 0, 0, 0, 1])
    assert best_f1_threshold(scores, noisy) == pytest.approx(0.75)
    assert best_f1_threshold(scores, np.zeros(6)) == DEFAULT_THRESHOLD


def test_the_evaluation_scores_each_label_and_the_sets() -> None:
    labels = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=np.float32)
    probabilities = np.array([[0.9, 0.2], [0.8, 0.3], [0.6, 0.1], [0.1, 0.9]])
    evaluation = evaluate_multilabel(labels, probabilities, np.array([0.5, 0.5]), ["a", "b"])
    # answered: {a}, {a}, {a}, {b}; true: {a}, {a, b}, {}, {b}
    assert evaluation["exact_match"] == evaluation["accuracy"] == 0.5
    assert evaluation["mean_jaccard"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    a, b = evaluation["per_class"]["a"], evaluation["per_class"]["b"]
    assert (a["precision"], a["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert (b["precision"], b["recall"], b["support"]) == (1.0, 0.5, 2)
    assert evaluation["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert evaluation["macro_f1"] == pytest.approx((a["f1"] + b["f1"]) / 2)
    assert evaluation["mean_average_precision"] == pytest.approx(
        (a["average_precision"] + b["average_precision"]) / 2
    )


def test_platt_scaling_lowers_the_calibration_error_of_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        # the truth: P(label) = sigmoid(z); the model says sigmoid(3 z), far too sure
        z = rng.normal(0, 1.5, size=(count, 3))
        labels = (rng.random((count, 3)) < 1 / (1 + np.exp(-z))).astype(np.float32)
        return 1 / (1 + np.exp(-3 * z)), labels

    validation, validation_labels = draw(300)
    test, test_labels = draw(2000)
    slopes, intercepts = fit_platt(validation, validation_labels)
    assert np.all(np.abs(slopes - 1 / 3) < 0.12)
    before = multilabel_calibration_error(test, test_labels)
    after = multilabel_calibration_error(platt_scaled(test, slopes, intercepts), test_labels)
    assert before > 0.08 and after < 0.03
    # a label validation shows one answer of is left as it is
    constant = np.zeros((10, 1), dtype=np.float32)
    assert fit_platt(np.full((10, 1), 0.3), constant) == (np.ones(1), np.zeros(1))


def test_the_curves_accuracy_of_a_multilabel_head_is_of_every_label_answer() -> None:
    """The epoch's val_accuracy is the share of (image, label) answers right at 0.5: checked
    against the kept (best-epoch) head's answers on the validation features."""
    from app.ml.config import HeadKind, Task
    from app.ml.fitting import TrainingHooks
    from app.ml.heads import HeadData, HeadSpec, averaged, train_head

    rng = np.random.default_rng(1)
    features = rng.normal(size=(120, 8)).astype(np.float32)
    labels = (features[:, :3] + rng.normal(0, 0.5, (120, 3)) > 0.8).astype(np.float32)
    data = HeadData(
        train_x=features[:80],
        train_y=labels[:80],
        validation=[features[80:]],
        validation_y=labels[80:],
    )
    trial = train_head(
        HeadSpec(HeadKind.LINEAR, l2=1e-3),
        data,
        class_count=3,
        label_smoothing=0.0,
        epochs=5,
        learning_rate=3e-2,
        seed=1,
        hooks=TrainingHooks(),
        task=Task.MULTILABEL,
    )
    best = next(e for e in trial.epochs if e.epoch == trial.best_epoch)
    answers = averaged(trial.model, data.validation)
    assert best.val_accuracy == pytest.approx(np.mean((answers > 0.5) == (labels[80:] > 0)))


# --- trained on real photos ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, list[str], list[dict[str, Any]]]:
    """100 + 40 + 30 side-by-side pairs of a pet and a vehicle photo (a quarter one photo)."""
    spec = MultilabelSet(
        "pets+vehicles",
        ("cats_vs_dogs_small", "car_vs_minibus_tiny"),
        {"train": 100, "validation": 40, "test": 30},
    )
    folder = build(spec, tmp_path_factory.mktemp("pairs"), seed=1)
    classes, by_split = read_labels(folder)
    images = [
        {"split": split, "file": path, "labels": labels}
        for split, rows in by_split.items()
        for path, labels in rows
    ]
    return folder, classes, images


def _trained(pairs: Any, method: Method, cache: Path, **overrides: Any) -> Any:
    folder, classes, images = pairs
    settings: dict[str, Any] = {
        "method": method,
        "image_size": SIZE,
        "epochs": {Method.BOTTLENECK: 30, Method.SCRATCH: 2}.get(method, 1),
        "head_epochs": 30,
        "batch_size": 16,
        "learning_rate": {Method.BOTTLENECK: 3e-3, Method.SCRATCH: 1e-3}.get(method),
        "dropout": 0.5,
        "seed": 1,
        "base_model": SPEC.key.value,
    }
    config = TrainConfig(**{**settings, **overrides})
    return train_on_photos(
        folder, images, classes=classes, config=config, cache=cache, task="multilabel"
    )


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    """Shared by the pretrained runs: the base's features are computed once."""
    return Path(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def bottleneck(pairs: Any, feature_cache: Path) -> Any:
    return _trained(pairs, Method.BOTTLENECK, feature_cache)


def test_a_bottleneck_model_learns_both_labels_of_a_pair(bottleneck: Any, pairs: Any) -> None:
    _, classes, _ = pairs
    evaluation = bottleneck.evaluation
    assert evaluation["task"] == "multilabel" and evaluation["split"] == "test"
    assert evaluation["classes"] == classes == ["car", "cats", "dogs", "minibus"]
    # (a ranking by chance: about each label's share, 0.3-0.4; at 128 px each photo of a
    # pair is 64 px wide)
    assert evaluation["mean_average_precision"] > 0.7
    for key in ("micro_f1", "macro_f1", "mean_jaccard"):
        assert 0.4 < evaluation[key] <= 1.0, key
    assert set(evaluation["per_class"]["car"]) >= {"average_precision", "threshold", "f1"}
    # a threshold per label, chosen on validation, and calibration by Platt scaling
    assert bottleneck.thresholds is not None and bottleneck.thresholds.shape == (4,)
    assert np.all((bottleneck.thresholds > 0) & (bottleneck.thresholds < 1))
    calibration = evaluation["calibration"]
    assert calibration["method"] == "platt" and set(calibration["per_label"]) == set(classes)
    assert "platt" in [layer.name for layer in bottleneck.model.layers]
    # no "unknown" index: a multi-label model answers "none" when no label passes
    assert bottleneck.outliers is None and "outliers" not in evaluation
    candidate = bottleneck.candidates[0]
    assert set(candidate.validation) == {"mean_average_precision", "loss"}


@pytest.mark.parametrize("method", [Method.FINETUNE, Method.SCRATCH])
def test_finetune_and_scratch_train_multilabel_models(
    pairs: Any, method: Method, feature_cache: Path
) -> None:
    # (scratch at 64 px: what is checked here is the multi-label output, not its accuracy)
    size = SIZE if method is Method.FINETUNE else 64
    outcome = _trained(pairs, method, feature_cache, balance_classes=True, image_size=size)
    assert outcome.method is method
    assert outcome.evaluation["task"] == "multilabel"
    assert outcome.thresholds is not None and outcome.thresholds.shape == (4,)
    # sigmoid outputs: each label's probability on its own, not summing to one
    images = np.zeros((2, size, size, 3), dtype=np.float32)
    answers = np.asarray(outcome.model.predict(images, verbose=0))
    assert answers.shape == (2, 4) and np.all((answers > 0) & (answers < 1))
    if method is Method.FINETUNE:
        assert outcome.evaluation["mean_average_precision"] > 0.7


@pytest.fixture(scope="module")
def version_folder(bottleneck: Any, pairs: Any, tmp_path_factory) -> Path:
    _, classes, _ = pairs
    folder = tmp_path_factory.mktemp("version")
    metadata = {
        "input": {"image_size": SIZE},
        "classes": classes,
        "task": "multilabel",
        "thresholds": dict(zip(classes, bottleneck.thresholds.tolist(), strict=True)),
    }
    write_model_files(folder, model=bottleneck.model, classes=classes, metadata=metadata)
    return folder


def test_the_version_keeps_its_thresholds_and_onnx_answers_as_keras(
    version_folder: Path, bottleneck: Any
) -> None:
    meta = json.loads((version_folder / "meta.json").read_text())
    assert "error" not in meta["exports"]["onnx"], meta["exports"]
    loaded = {
        runtime: load_classifier(version_folder, max_batch=8, name="pairs", runtime=runtime)
        for runtime in ("keras", "onnxruntime")
    }
    pixels = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    answers = {name: c.forward(pixels).probabilities for name, c in loaded.items()}
    np.testing.assert_allclose(answers["keras"], answers["onnxruntime"], atol=2e-3)
    for classifier in loaded.values():
        np.testing.assert_allclose(classifier.thresholds, bottleneck.thresholds)
        classifier.batcher.close()


@pytest.fixture
def pairs_client(configure, sqlite_url: str, version_folder: Path) -> Iterator[Any]:
    from app.services import model_versions
    from tests.conftest import api_client, migrate

    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600")
    migrate(sqlite_url)
    metadata = json.loads((version_folder / "meta.json").read_text())
    model_versions.register_version(
        name="pairs",
        job_id=None,
        owner=None,
        source_dir=version_folder,
        metadata=metadata,
        metrics_summary={"test_accuracy": None},
    )
    with api_client() as client:
        yield client


def test_predict_lists_every_label_and_those_above_their_thresholds(
    pairs_client: Any, pairs: Any
) -> None:
    folder, _, images = pairs
    tests = [image for image in images if image["split"] == "test"][:8]
    files = [("files", (Path(i["file"]).name, (folder / i["file"]).read_bytes())) for i in tests]
    response = pairs_client.post("/predict", files=files, data={"top_k": "1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "multilabel"
    right = 0
    for image, answer in zip(tests, body["predictions"], strict=True):
        assert len(answer["labels"]) == 4  # every label, whatever top_k says
        probabilities = [label["probability"] for label in answer["labels"]]
        assert probabilities == sorted(probabilities, reverse=True)
        passed = [label["label"] for label in answer["labels"] if label["above_threshold"]]
        assert answer["labels_above_threshold"] == passed
        assert all(
            (label["probability"] >= label["threshold"]) == label["above_threshold"]
            for label in answer["labels"]
        )
        right += sorted(passed) == sorted(image["labels"])
        assert answer["unknown"] is False and answer["outlier_score"] is None
    assert right >= 4
    # a threshold of the request's own, for every label
    strict = pairs_client.post("/predict", files=files[:2], data={"label_threshold": "1.0"})
    assert strict.status_code == 200
    for answer in strict.json()["predictions"]:
        assert answer["labels_above_threshold"] == []
        assert {label["threshold"] for label in answer["labels"]} == {1.0}
    too_high = pairs_client.post("/predict", files=files[:1], data={"label_threshold": "1.5"})
    assert too_high.status_code == 422


def test_a_label_near_its_threshold_goes_to_the_review_queue(pairs_client: Any, pairs: Any) -> None:
    from app.services import review
    from app.services.review.capture import label_near_threshold

    thresholds = np.array([0.3, 0.6])
    assert label_near_threshold(np.array([0.9, 0.55]), thresholds, review_threshold=0.8)
    assert not label_near_threshold(np.array([0.9, 0.05]), thresholds, review_threshold=0.8)

    folder, _, images = pairs
    tests = [image for image in images if image["split"] == "test"][:8]
    files = [("files", (Path(i["file"]).name, (folder / i["file"]).read_bytes())) for i in tests]
    # a review threshold of 0.5: a label within 0.5 of its threshold is unsure
    response = pairs_client.put("/models/pairs/review", json={"threshold": 0.5})
    assert response.status_code == 200, response.text
    review.THRESHOLDS.forget()
    answers = pairs_client.post("/predict", files=files).json()["predictions"]
    unsure = {
        answer["filename"]
        for answer in answers
        if any(abs(x["probability"] - x["threshold"]) < 0.5 for x in answer["labels"])
    }
    assert unsure  # (every image has a label within 0.5 of its threshold, or nearly)
    items = pairs_client.get("/review/items", params={"model": "pairs"}).json()
    assert {item["filename"] for item in items} == unsure


def test_a_feature_that_never_varies_in_training_is_centred_not_scaled() -> None:
    from app.ml.heads import standardisation

    train = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    train[:, 1] = 0.25  # constant: no spread to divide by
    layer = standardisation(train)
    new = np.array([[0.0, 0.35, 0.0]], dtype=np.float32)
    out = keras_numpy(layer(new))
    assert out[0, 1] == pytest.approx(0.1, abs=1e-6)  # 0.35 - 0.25, not 0.1 / 1e-7
    varied = standardisation(np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32))
    assert abs(keras_numpy(varied(new))).max() < 10


def keras_numpy(tensor: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(tensor))
