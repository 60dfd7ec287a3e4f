"""The "unknown" answer: its threshold rule, its index, and a model trained on real photos
that turns away photos of something else, in Keras, in ONNX Runtime and through /predict."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.ml import bases, builders
from app.ml.config import Method, TrainConfig
from app.ml.data import resize_pixels
from app.ml.images import decode_image, image_to_array
from app.ml.outliers import (
    MIN_CALIBRATION_IMAGES,
    OUTLIER_FILE,
    OutlierIndex,
    knn_distances,
    normalised,
    threshold_rank,
)
from app.ml.serving import load_classifier, write_model_files
from tests.models import train_on_photos
from tests.zips import SHARED

CARS = SHARED / "data" / "car_vs_minibus_tiny"
FLOWERS = sorted((SHARED / "data" / "flowers_small" / "test").rglob("*.jpg"))[::10][:12]
SIZE = 128
SPEC = bases.BASES[bases.BaseName.MOBILENET]


def test_the_threshold_rank_keeps_its_promise_and_says_when_it_cannot() -> None:
    # The rank's coverage is Beta(j, n + 1 - j): simulated, a new score lands above the
    # chosen order statistic at most 5 % of the time in at least 90 % of the draws.
    rng = np.random.default_rng(0)
    for n in (50, 120, 400):
        rank, assured = threshold_rank(n, rejection=0.05, confidence=0.90)
        assert assured and rank <= n
        coverage = np.sort(rng.uniform(size=(4000, n)), axis=1)[:, rank - 1]
        assert np.mean(coverage >= 0.95) >= 0.88  # 0.90 up to the simulation's noise
        if rank > 1:  # and it is the smallest rank that does
            looser = np.sort(rng.uniform(size=(4000, n)), axis=1)[:, rank - 2]
            assert np.mean(looser >= 0.95) < 0.92
    # 120 images: about their 98th percentile, not the 95th
    assert threshold_rank(120, rejection=0.05, confidence=0.90) == (118, True)
    # too few to be that sure: the largest score, and the answer says so
    assert threshold_rank(30, rejection=0.05, confidence=0.90) == (30, False)


def test_knn_distances_compare_with_the_kth_neighbour() -> None:
    references = normalised(np.eye(6, dtype=np.float32) + 0.01)
    queries = references[:2]
    assert knn_distances(queries, references, neighbours=1) == pytest.approx([0, 0], abs=1e-6)
    assert np.all(knn_distances(queries, references, neighbours=2) > 0.1)
    with pytest.raises(ValueError, match="fewer than"):
        knn_distances(queries, references[:2], neighbours=5)


def test_an_index_is_fitted_saved_and_loaded_with_its_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    centre = rng.normal(size=16)
    train_features = centre + 0.3 * rng.normal(size=(200, 16))
    validation = centre + 0.3 * rng.normal(size=(60, 16))
    index = OutlierIndex.fit(train_features, calibration=validation)
    assert index is not None and index.describe()["calibrated_on"] == "validation" and index.assured
    assert index.calibration_rejected <= 0.05
    outliers = -centre + 0.3 * rng.normal(size=(20, 16))
    assert np.all(index.scores(outliers) > index.threshold)
    index.save(tmp_path / OUTLIER_FILE)
    loaded = OutlierIndex.load(tmp_path / OUTLIER_FILE, described=index.describe())
    assert loaded.threshold == pytest.approx(index.threshold)
    np.testing.assert_allclose(loaded.scores(validation), index.scores(validation), atol=2e-3)
    # too few validation images for a threshold, or none: no index (the version has no
    # unknown answer; the training images' own scores run low and cannot stand in)
    few = validation[: MIN_CALIBRATION_IMAGES - 1]
    assert OutlierIndex.fit(train_features, calibration=few) is None
    assert OutlierIndex.fit(train_features, calibration=None) is None


def test_a_large_training_set_is_sampled_down_to_the_reference_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import app.ml.outliers as outliers

    monkeypatch.setattr(outliers, "MAX_REFERENCE_IMAGES", 50)
    rng = np.random.default_rng(3)
    index = OutlierIndex.fit(rng.normal(size=(400, 8)), calibration=rng.normal(size=(30, 8)))
    assert index is not None and len(index.references) == 50
    negatives = rng.normal(size=(120, 8))
    helped = OutlierIndex.fit(
        rng.normal(size=(400, 8)), calibration=rng.normal(size=(30, 8)), negatives=negatives
    )
    assert helped is not None and helped.negatives is not None and len(helped.negatives) == 50


def test_negative_examples_turn_away_images_like_them_and_still_the_far_ones(
    tmp_path: Path,
) -> None:
    # classes around +c, negatives around a nearby direction, far outliers around -c
    rng = np.random.default_rng(2)
    dims = 32
    centre = rng.normal(size=dims)
    near = centre + 0.25 * rng.normal(size=dims)

    def around(point: np.ndarray, n: int) -> np.ndarray:
        return point + 0.35 * rng.normal(size=(n, dims))

    train_features, validation = around(centre, 300), around(centre, 100)
    negatives, like_negatives, far = around(near, 60), around(near, 50), around(-centre, 50)
    alone = OutlierIndex.fit(train_features, calibration=validation)
    helped = OutlierIndex.fit(train_features, calibration=validation, negatives=negatives)
    assert alone is not None and helped is not None and helped.negatives is not None
    assert helped.describe()["negatives"] == 60
    turned_away = {
        name: float(np.mean(index.scores(like_negatives) > index.threshold))
        for name, index in (("alone", alone), ("helped", helped))
    }
    assert turned_away["helped"] >= turned_away["alone"] + 0.2, turned_away
    assert np.mean(helped.scores(far) > helped.threshold) >= 0.9
    assert helped.calibration_rejected <= 0.05
    helped.save(tmp_path / OUTLIER_FILE)
    loaded = OutlierIndex.load(tmp_path / OUTLIER_FILE, described=helped.describe())
    np.testing.assert_allclose(loaded.scores(like_negatives), helped.scores(like_negatives))
    # fewer negatives than the neighbours compared: not used
    too_few = OutlierIndex.fit(train_features, calibration=validation, negatives=negatives[:4])
    assert too_few is not None and too_few.negatives is None


def _pixels(paths: list[Path]) -> np.ndarray:
    return np.stack(
        [
            resize_pixels(
                image_to_array(decode_image(path.read_bytes(), max_pixels=10**8).image),
                image_size=SIZE,
            )
            for path in paths
        ]
    )


def _car_photos(split: str, count: int) -> list[Path]:
    return [
        path
        for label in ("car", "minibus")
        for path in sorted((CARS / split / label).iterdir())[:count]
    ]


def _trained(method: Method, cache: Path) -> Any:
    """A model trained by the service's training code on 40 + 40 photos of cars and minibuses
    (15 + 15 to validate: enough for a threshold)."""
    images = [
        {"split": split, "file": str(path.relative_to(CARS)), "label": path.parent.name}
        for split, count in (("train", 40), ("validation", 15), ("test", 10))
        for path in _car_photos(split, count)
    ]
    config = TrainConfig(
        method=method,
        image_size=SIZE,
        epochs=20 if method is Method.BOTTLENECK else 2,
        head_epochs=20,
        batch_size=16,
        learning_rate=3e-3 if method is Method.BOTTLENECK else 1e-4,
        dropout=0.5,
        seed=1,
        base_model=SPEC.key.value,
    )
    return train_on_photos(CARS, images, classes=["car", "minibus"], config=config, cache=cache)


@pytest.fixture(scope="module")
def version_folder(tmp_path_factory) -> Path:
    """A bottleneck model's version files, as a training job writes them."""
    outcome = _trained(Method.BOTTLENECK, tmp_path_factory.mktemp("features"))
    assert outcome.outliers is not None
    folder = tmp_path_factory.mktemp("version")
    metadata = {
        "input": {"image_size": SIZE},
        "classes": ["car", "minibus"],
        "outliers": outcome.outliers.describe(),
        "evaluation": outcome.evaluation,
    }
    write_model_files(
        folder,
        model=outcome.model,
        classes=["car", "minibus"],
        metadata=metadata,
        outliers=outcome.outliers,
    )
    return folder


def test_the_evaluation_reports_the_threshold_and_what_it_turned_away(
    version_folder: Path,
) -> None:
    report = json.loads((version_folder / "meta.json").read_text())["evaluation"]["outliers"]
    assert report["calibrated_on"] == "validation" and report["calibration_images"] == 30
    assert report["reference_images"] == 80 and report["neighbours"] == 5
    assert report["split"] == "test" and 0.0 <= report["rejected"] <= 0.2
    assert not report["assured"]  # 30 images: the largest score, and it says so


@pytest.mark.parametrize("runtime", ["keras", "onnxruntime"])
def test_a_photo_of_something_else_is_unknown_and_the_trained_kind_is_not(
    version_folder: Path, runtime: str
) -> None:
    classifier = load_classifier(version_folder, max_batch=8, name="cars", runtime=runtime)
    try:
        assert classifier.outliers is not None
        threshold = classifier.outliers.threshold
        own = classifier.forward(_pixels(_car_photos("test", 10)))
        others = classifier.forward(_pixels(FLOWERS))
    finally:
        classifier.close()
    assert own.outlier_scores is not None and others.outlier_scores is not None
    assert np.mean(own.outlier_scores > threshold) <= 0.2
    assert np.mean(others.outlier_scores > threshold) >= 0.8
    # the probabilities are still the model's: a flower is a very sure car or minibus, which
    # is why the score is not the top probability
    assert own.probabilities.shape == (20, 2)


def test_the_onnx_export_carries_the_features_the_score_reads(version_folder: Path) -> None:
    from app.ml.export import EMBEDDING_NAME, ONNX_FILE, OUTPUT_NAME, onnx_session

    session = onnx_session(version_folder / ONNX_FILE)
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME, EMBEDDING_NAME]
    meta = json.loads((version_folder / "meta.json").read_text())
    assert meta["exports"]["onnx"]["max_abs_difference"] <= 1e-4


def test_a_fine_tuned_models_index_holds_the_features_its_served_graph_computes(
    tmp_path: Path,
) -> None:
    """The index is made from the frozen base's cached features; the served graph of the
    fine-tuned model computes them from pixels through its frozen top block, saved and
    loaded with the version, in Keras and in its ONNX export: the same features."""
    from app.ml.export import ONNX_FILE, onnx_session

    outcome = _trained(Method.FINETUNE, tmp_path / "features")
    assert outcome.method is Method.FINETUNE and outcome.outliers is not None
    assert outcome.frozen_top is not None
    folder = tmp_path / "version"
    folder.mkdir()
    write_model_files(
        folder,
        model=outcome.model,
        classes=["car", "minibus"],
        metadata={"input": {"image_size": SIZE}, "outliers": outcome.outliers.describe()},
        outliers=outcome.outliers,
        frozen_top=outcome.frozen_top,
    )
    pixels = _pixels(_car_photos("train", 40)[:3])
    expected = outcome.outliers.references[:3]
    # without the frozen block, the head's input is the tuned base's: other features
    tuned = builders.with_embedding(outcome.model)
    assert tuned is not None
    assert np.max(np.abs(normalised(tuned.predict(pixels, verbose=0)[1]) - expected)) > 5e-3
    classifier = load_classifier(folder, max_batch=4, name="tuned", runtime="keras")
    try:
        assert classifier.outliers is not None
        scores = classifier.forward(pixels).outlier_scores
    finally:
        classifier.close()
    assert scores is not None
    np.testing.assert_allclose(scores, outcome.outliers.scores(expected), atol=5e-3)
    session = onnx_session(folder / ONNX_FILE)
    features = session.run(None, {"pixels": pixels})[1]
    np.testing.assert_allclose(normalised(features), expected, atol=5e-3)
    assert math.isfinite(outcome.outliers.threshold)


@pytest.fixture
def cars_client(configure, sqlite_url: str, version_folder: Path) -> Iterator[Any]:
    """The API on SQLite with the car model registered as `cars` v1."""
    from app.services import model_versions
    from tests.conftest import api_client, migrate

    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600")
    migrate(sqlite_url)
    metadata = json.loads((version_folder / "meta.json").read_text())
    model_versions.register_version(
        name="cars",
        job_id=None,
        owner=None,
        source_dir=version_folder,
        metadata=metadata,
        metrics_summary={"test_accuracy": None},
    )
    with api_client() as client:
        yield client


def _predict(client: Any, paths: list[Path], **form: str) -> dict[str, Any]:
    files = [("files", (path.name, path.read_bytes())) for path in paths]
    response = client.post("/predict", files=files, data=form)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_predict_answers_unknown_for_a_flower_and_a_request_can_turn_it_off(
    cars_client: Any,
) -> None:
    car, flower = _car_photos("test", 1)[0], FLOWERS[0]
    body = _predict(cars_client, [car, flower])
    own, other = body["predictions"]
    assert body["outlier_threshold"] > 0
    assert own["unknown"] is False and own["outlier_score"] < body["outlier_threshold"]
    assert other["unknown"] is True and other["outlier_score"] > body["outlier_threshold"]
    # the labels are still listed, most likely first
    assert {label["label"] for label in other["labels"]} == {"car", "minibus"}

    # turned off: only the labels
    off = _predict(cars_client, [flower], detect_unknown="false")
    assert off["outlier_threshold"] is None
    assert off["predictions"][0]["unknown"] is False
    assert off["predictions"][0]["outlier_score"] is None
    # a threshold of the request's own: over the flower's score, it is not unknown
    lenient = _predict(cars_client, [flower], outlier_threshold="1.5")
    assert lenient["outlier_threshold"] == 1.5 and lenient["predictions"][0]["unknown"] is False
    # JSON bodies take the same options
    import base64

    response = cars_client.post(
        "/predict/json",
        json={"images": [{"b64": base64.b64encode(flower.read_bytes()).decode()}]},
    )
    assert response.status_code == 200 and response.json()["predictions"][0]["unknown"] is True
    too_high = cars_client.post(
        "/predict", files={"file": ("f.jpg", flower.read_bytes())}, data={"outlier_threshold": "3"}
    )
    assert too_high.status_code == 422


def test_an_unknown_answer_goes_to_the_review_queue_even_when_it_is_sure(
    cars_client: Any,
) -> None:
    from app.services import review

    response = cars_client.put("/models/cars/review", json={"threshold": 0.0001})
    assert response.status_code == 200, response.text
    review.THRESHOLDS.forget()
    car, flower = _car_photos("test", 1)[0], FLOWERS[0]
    _predict(cars_client, [car, flower])
    items = cars_client.get("/review/items", params={"model": "cars"}).json()
    assert [item["filename"] for item in items] == [flower.name]


def test_a_dataset_with_negative_examples_trains_an_index_that_turns_more_of_them_away(
    tmp_path: Path,
) -> None:
    """Four flower classes, the fifth as negative examples (its training photos) and as the
    near outliers to check with (its test photos): the index made with the negatives turns
    away more of those than the one made without them."""
    from app.ml.data import NEGATIVE_LABEL

    root = SHARED / "data" / "flowers_small"
    *kept, held_out = sorted(p.name for p in (root / "train").iterdir())

    def listed(split: str, label: str, count: int, as_label: str) -> list[dict[str, str]]:
        paths = sorted((root / split / label).iterdir())[:count]
        return [
            {"split": split, "file": str(p.relative_to(root)), "label": as_label} for p in paths
        ]

    images = [
        item
        for label in kept
        for split, count in (("train", 25), ("validation", 8), ("test", 5))
        for item in listed(split, label, count, label)
    ]
    negatives = listed("train", held_out, 30, NEGATIVE_LABEL)
    negatives += listed("test", held_out, 20, NEGATIVE_LABEL)
    config = TrainConfig(
        method=Method.BOTTLENECK,
        image_size=SIZE,
        epochs=10,
        batch_size=16,
        learning_rate=3e-3,
        dropout=0.5,
        seed=1,
        base_model=SPEC.key.value,
    )

    def report(items: list[dict[str, str]]) -> dict[str, Any]:
        outcome = train_on_photos(root, items, classes=kept, config=config, cache=tmp_path)
        assert outcome.method is Method.BOTTLENECK and outcome.evaluation is not None
        outliers: dict[str, Any] = outcome.evaluation["outliers"]
        return outliers

    # the test split's negatives are scored by both (held out: never in an index)
    without = report([*images, *negatives[30:]])
    helped = report([*images, *negatives])
    assert without["negatives"] == 0 and helped["negatives"] == 30
    assert helped["held_out_negatives"] == without["held_out_negatives"] == 20
    assert helped["held_out_negatives_rejected"] >= without["held_out_negatives_rejected"] + 0.1, (
        helped,
        without,
    )
    assert helped["rejected"] <= 0.2  # of the kept classes' own test photos
