"""Training jobs end to end: the API, a real Celery worker on Redis, PostgreSQL, tiny photos."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import worker_stack
from tests.processes import wait_job_finished, wait_until
from tests.zips import SHARED, tiny_photo_zip

TINY = {"image_size": 32, "batch_size": 8, "base_model": "mobilenet", "seed": 3}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request) -> Iterator[tuple[TestClient, Path]]:
    """API client + one real worker on PostgreSQL and Redis, shared by this module's tests."""
    with worker_stack(
        tmp_path_factory.mktemp("training"),
        postgres_url=request.getfixturevalue("module_postgres_url"),
        redis_url=request.getfixturevalue("module_redis_url"),
        JOB_HEARTBEAT_TIMEOUT_SECONDS="600",
    ) as stack:
        # Weights downloads are off, as on an offline deployment: a base without weights on
        # disk is refused at submit (downloads: tests/services/test_weights_download.py).
        yield stack


@pytest.fixture(scope="module")
def dataset_id(stack, tmp_path_factory) -> str:
    client, _ = stack
    archive = tiny_photo_zip(tmp_path_factory.mktemp("zip") / "tiny.zip")
    response = client.post(
        "/datasets", files={"file": ("tiny.zip", archive.read_bytes())}, data={"name": "tiny"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _start(client: TestClient, **request: object) -> str:
    response = client.post("/jobs", json=request)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    return str(response.json()["id"])


def _finished(client: TestClient, job_id: str, log: Path, timeout: float = 240) -> dict:
    return wait_job_finished(client, job_id, log=log, timeout=timeout)


@pytest.mark.parametrize("method", ["scratch", "bottleneck", "finetune", "auto"])
def test_each_method_trains_evaluates_and_registers_a_version(
    stack, dataset_id: str, method: str
) -> None:
    client, log = stack
    # scratch also saves the flip-averaged model, which has to load and serve like the others
    flip = method == "scratch"
    job_id = _start(
        client,
        dataset_id=dataset_id,
        method=method,
        epochs=2,
        head_epochs=1,
        model_name=f"tiny-{method}",
        test_time_flip=flip,
        **TINY,
    )
    job = _finished(client, job_id, log)
    assert job["status"] == "succeeded", (job["error"], log.read_text()[-3000:])
    assert job["progress"] == 1.0

    metrics = client.get(f"/jobs/{job_id}/metrics").json()
    stages = [e["stage"] for e in metrics["epochs"]]
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, len(stages) + 1))
    if method == "scratch":
        assert stages == ["train", "train"]
    elif method == "bottleneck":  # the chosen head's epochs: it may stop early
        assert stages and set(stages) == {"head"} and len(stages) <= 2
    else:  # one head epoch, then two of fine-tuning at a warm-up then decaying rate
        assert stages == ["head", "finetune", "finetune"]
        rates = [e["learning_rate"] for e in metrics["epochs"][1:]]
        finetune = next(c for c in job["result"]["candidates"] if c["method"] == "finetune")
        chosen_rate = finetune["settings"]["learning_rate"]  # tiny data: every rate tried
        assert [r["learning_rate"] for r in finetune["settings"]["learning_rates_tried"]] == [
            1e-4,
            3e-4,
        ]
        assert rates[0] == pytest.approx(chosen_rate, rel=1e-3)  # the end of the warm-up
        assert 0 <= rates[1] < rates[0]  # cosine decay to zero at the end
    expected_epochs = len(stages)
    for epoch in metrics["epochs"]:
        assert epoch["loss"] is not None and epoch["val_accuracy"] is not None
        assert epoch["seconds"] > 0
    evaluation = metrics["evaluation"]
    assert evaluation["split"] == "test"
    assert evaluation["samples"] == 8
    assert set(evaluation["per_class"]) == {"cats", "dogs"}
    assert sum(map(sum, evaluation["confusion_matrix"])) == 8
    assert 1 <= metrics["best_epoch"] <= expected_epochs

    assert ("single_view_accuracy" in job["result"]) is flip
    result = job["result"]
    kept = {"auto": {"bottleneck", "finetune"}}.get(method, {method})
    assert result["method"] == result["chosen"]["method"] and result["method"] in kept
    assert result["chosen"]["reason"]
    tried = {c["method"]: c for c in result["candidates"]}
    if method == "auto":  # both pretrained candidates, and why scratch was not tried
        assert tried["bottleneck"]["validation"] and tried["finetune"]["validation"]
        assert "fewer than" in tried["scratch"]["skipped"]
    # A fine-tuned model kept learns from the validation images too; what is evaluated (on
    # the test split) and saved is that model, while its candidate keeps the validated scores.
    refit = tried.get("finetune", {}).get("settings", {}).get("refit")
    assert (refit is not None) is (result["method"] == "finetune")
    if refit is not None:
        assert refit["epochs"] == 2 and refit["images"] > 8
        assert refit["test"]["accuracy"] == evaluation["accuracy"]
        assert "trained again on the training and validation images" in result["chosen"]["reason"]
    model = result["model"]
    assert model["name"] == f"tiny-{method}"
    assert model["version"] == 1
    # A model no better than chance on validation is kept but not served by default, and
    # the job says so in words.
    assert model["active"] is not bool(result["warnings"])
    if result["warnings"]:
        assert "stayed at chance" in result["warnings"][0]
    # The saved model loads and answers (a model saved WITH its augmentation layers would not:
    # Keras 3.15 cannot deserialize RandomShear), on a photo of any size.
    photo = sorted((SHARED / "data" / "cats_vs_dogs_small" / "test" / "dogs").iterdir())[0]
    answer = client.post(
        "/predict",
        files={"file": (photo.name, photo.read_bytes())},
        data={"model": model["name"], "version": "1"},
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["model"], answer.json()["version"]) == (model["name"], 1)
    # Every method's model (the flip-averaged scratch one too) is exported to ONNX, within
    # the parity tolerance, and served by ONNX Runtime.
    assert "error" not in result["exports"]["onnx"], result["exports"]
    assert result["exports"]["onnx"]["max_abs_difference"] <= 1e-4
    assert answer.json()["runtime"] == "onnxruntime"
    assert {x["label"] for x in answer.json()["predictions"][0]["labels"]} == {"cats", "dogs"}
    for picture in ("metrics.png", "confusion.png"):
        response = client.get(f"/jobs/{job_id}/{picture}")
        assert response.status_code == 200
        assert response.content.startswith(b"\x89PNG")
    _answers_match_the_evaluation(client, job_id, evaluation)


def _answers_match_the_evaluation(client: TestClient, job_id: str, evaluation: dict) -> None:
    """GET /jobs/{id}/predictions: the evaluation image by image, counted as its totals are."""
    page = client.get(f"/jobs/{job_id}/predictions", params={"limit": 500}).json()
    classes = evaluation["classes"]
    assert page["split"] == evaluation["split"] and page["classes"] == classes
    assert page["evaluated"] == page["matching"] == len(page["items"]) == evaluation["samples"]
    assert page["correct"] == round(evaluation["accuracy"] * evaluation["samples"])
    cells = [[0] * len(classes) for _ in classes]
    for item in page["items"]:
        (truth,), (answer,) = item["true_labels"], item["predicted_labels"]
        assert answer == max(item["probabilities"], key=item["probabilities"].get)
        assert item["correct"] is (truth == answer)
        cells[classes.index(truth)][classes.index(answer)] += 1
    assert cells == evaluation["confusion_matrix"]
    # the filters: a confusion cell, the mistakes, paging
    cell = client.get(
        f"/jobs/{job_id}/predictions",
        params={"true_label": classes[0], "predicted_label": classes[1]},
    ).json()
    assert cell["matching"] == evaluation["confusion_matrix"][0][1] == len(cell["items"])
    wrong = client.get(f"/jobs/{job_id}/predictions", params={"mistakes": "true"}).json()
    assert wrong["matching"] == page["evaluated"] - page["correct"]
    assert not any(item["correct"] for item in wrong["items"])
    second = client.get(f"/jobs/{job_id}/predictions", params={"offset": 1, "limit": 2}).json()
    assert second["items"] == page["items"][1:3]
    # each image's thumbnail, upright and small
    thumbnail = client.get(page["items"][0]["image_url"], params={"size": 48})
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    from PIL import Image

    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 48
    # bad requests say what is wrong
    bad = client.get(f"/jobs/{job_id}/predictions", params={"true_label": "horses"})
    assert bad.status_code == 400 and "not a class of the model" in bad.json()["detail"]
    assert client.get(f"/jobs/{job_id}/predictions", params={"limit": 501}).status_code == 422
    image_url = page["items"][0]["image_url"]
    assert client.get(image_url, params={"size": 4096}).status_code == 422
    missing = image_url.replace(page["items"][0]["image_id"], "0" * 64)
    assert client.get(missing).status_code == 404
    assert client.get(image_url.replace(page["items"][0]["image_id"], "x")).status_code == 422


def test_saved_model_takes_raw_pixels_of_any_size(stack, dataset_id: str) -> None:
    import keras
    import numpy as np

    from app.db.models import ModelVersion
    from app.db.session import session_scope
    from app.services.model_versions import model_store

    client, log = stack
    job_id = _start(
        client, dataset_id=dataset_id, method="bottleneck", epochs=1, model_name="tiny-raw", **TINY
    )
    first_job = _finished(client, job_id, log)
    assert first_job["status"] == "succeeded"
    second = _start(
        client, dataset_id=dataset_id, method="bottleneck", epochs=1, model_name="tiny-raw", **TINY
    )
    second_job = _finished(client, second, log)
    assert second_job["result"]["model"]["version"] == 2
    with session_scope() as session:
        versions = session.query(ModelVersion).filter_by(name="tiny-raw").order_by("version").all()
        # a second version never replaces the active one by itself; the first is active
        # unless it stayed at chance
        first_active = not first_job["result"]["warnings"]
        assert [(v.version, v.is_active) for v in versions] == [(1, first_active), (2, False)]
        folder = model_store().verified_path(versions[0].path, expected_sha256=versions[0].sha256)
    model = keras.saving.load_model(folder / "model.keras")
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 57, 91, 3)).astype("float32")
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (2, 2)  # a softmax over the two classes
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_second_bottleneck_job_reuses_cached_features(stack, dataset_id: str) -> None:
    client, log = stack
    request = {
        "dataset_id": dataset_id,
        "method": "bottleneck",
        "epochs": 1,
        **TINY,
        "image_size": 48,
    }
    first = _finished(client, _start(client, **request), log)
    second = _finished(client, _start(client, **request), log)
    assert first["result"]["feature_cache_hit"] is False
    assert second["result"]["feature_cache_hit"] is True
    assert second["result"]["feature_cache_key"] == first["result"]["feature_cache_key"]
    # No GPU here: the frozen base ran in ONNX Runtime; cached features ran in nothing.
    assert first["result"]["feature_runtime"] == "onnxruntime"
    assert second["result"]["feature_runtime"] is None


def test_cancel_stops_a_running_job_within_a_batch(stack, dataset_id: str) -> None:
    client, log = stack
    job_id = _start(client, dataset_id=dataset_id, method="scratch", epochs=500, **TINY)

    def trained_an_epoch() -> bool:
        return bool(client.get(f"/jobs/{job_id}/metrics").json()["epochs"])

    wait_until(trained_an_epoch, timeout=120, what="the first epoch", log=log)
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    requested = time.monotonic()
    job = _finished(client, job_id, log, timeout=60)
    assert job["status"] == "cancelled"
    assert time.monotonic() - requested < 30
    assert job["result"] is None  # no model version for a cancelled job
    assert len(client.get(f"/jobs/{job_id}/metrics").json()["epochs"]) < 500
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_a_killed_worker_child_does_not_leave_the_job_running(stack, dataset_id: str) -> None:
    client, log = stack
    job_id = _start(client, dataset_id=dataset_id, method="scratch", epochs=25, **TINY)

    def running_with_epochs() -> bool:
        job = client.get(f"/jobs/{job_id}").json()
        return job["status"] == "running" and bool(
            client.get(f"/jobs/{job_id}/metrics").json()["epochs"]
        )

    wait_until(running_with_epochs, timeout=120, what="the job to run", log=log)
    first_worker = client.get(f"/jobs/{job_id}").json()["worker_id"]
    os.kill(int(first_worker.rpartition("/")[2]), signal.SIGKILL)

    job = _finished(client, job_id, log, timeout=240)
    assert job["status"] == "succeeded", (job["error"], log.read_text()[-3000:])
    assert job["worker_id"] != first_worker  # taken over by a fresh child and run again
    epochs = [e["epoch"] for e in client.get(f"/jobs/{job_id}/metrics").json()["epochs"]]
    assert epochs == list(range(1, 26))


def test_a_job_whose_data_is_broken_fails_with_a_readable_error(stack, dataset_id: str) -> None:
    client, log = stack
    from app.core.config import get_settings

    archive = tiny_photo_zip(Path(get_settings().data_dir) / "broken.zip")
    created = client.post(
        "/datasets", files={"file": ("b.zip", archive.read_bytes())}, data={"name": "broken"}
    ).json()
    (Path(get_settings().datasets_dir) / created["id"] / "manifest.json").unlink()
    job = _finished(
        client, _start(client, dataset_id=created["id"], method="scratch", epochs=1, **TINY), log
    )
    assert job["status"] == "failed"
    assert job["error"].startswith("ObjectNotFoundError")
    assert f"{created['id']}/manifest.json is not in {get_settings().datasets_dir}" in job["error"]


def test_request_errors(stack, dataset_id: str) -> None:
    client, _ = stack
    unknown = client.post("/jobs", json={"dataset_id": "00000000-0000-0000-0000-000000000000"})
    assert unknown.status_code == 404
    bad = client.post("/jobs", json={"dataset_id": dataset_id, "method": "magic"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "method"]
    too_small = client.post("/jobs", json={"dataset_id": dataset_id, "image_size": 8})
    assert too_small.json()["detail"][0]["loc"] == ["body", "image_size"]
    bad_name = client.post("/jobs", json={"dataset_id": dataset_id, "model_name": "../x"})
    assert bad_name.json()["detail"][0]["loc"] == ["body", "model_name"]
    bad_flip = client.post("/jobs", json={"dataset_id": dataset_id, "test_time_flip": "maybe"})
    assert bad_flip.status_code == 422
    assert bad_flip.json()["detail"][0]["loc"] == ["body", "test_time_flip"]
    bad_refit = client.post("/jobs", json={"dataset_id": dataset_id, "refit_on_validation": []})
    assert bad_refit.status_code == 422
    assert bad_refit.json()["detail"][0]["loc"] == ["body", "refit_on_validation"]
    no_weights = client.post(
        "/jobs", json={"dataset_id": dataset_id, "method": "finetune", "base_model": "resnet50"}
    )
    assert no_weights.status_code == 400
    assert no_weights.json()["error"] == "weights_not_found"
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in no_weights.json()["detail"]
    listed = client.get(f"/jobs?dataset_id={dataset_id}&status=succeeded").json()
    assert listed and all(j["status"] == "succeeded" for j in listed)
    assert client.get("/jobs?status=bogus").status_code == 422


def test_queued_job_cancel_is_immediate(stack, dataset_id: str) -> None:
    import uuid

    from app.db.session import session_scope
    from app.ml.config import Method
    from app.services import jobs, training

    client, _ = stack
    with session_scope() as session:  # queued but never sent: no worker can race the cancel
        job = jobs.create_job(
            session,
            method=Method.SCRATCH,
            dataset_id=uuid.UUID(dataset_id),
            parameters={},
            owner=None,
        )
        job_id = job.id
    assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    training.run_job(job_id=job_id, worker_id="late-delivery/1")
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_multilabel_dataset_trains_a_model_with_thresholds_that_predict_applies(
    stack, tmp_path: Path
) -> None:
    """A labels.csv of side-by-side photo pairs (pet + vehicle; some flower photos with no
    label: negative examples): the default (auto) job trains sigmoid outputs, reports mAP,
    stores a threshold per label, and /predict lists them."""
    import zipfile

    from benchmarks.multilabel_sets import MultilabelSet, build

    client, log = stack
    spec = MultilabelSet(
        "pairs",
        ("cats_vs_dogs_small", "car_vs_minibus_tiny"),
        {"train": 24, "validation": 20, "test": 12},
        negatives="flowers_small",
    )
    folder = build(spec, tmp_path, seed=2)
    listed = (folder / "labels.csv").read_text().splitlines()
    negatives = [line for line in listed if ",," in line]
    assert negatives  # (the seeded draw gives some images no label)
    archive = tmp_path / "pairs.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, str(path.relative_to(folder)))
    response = client.post(
        "/datasets", files={"file": ("pairs.zip", archive.read_bytes())}, data={"name": "pairs"}
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["task"] == "multilabel"
    assert dataset["class_names"] == ["car", "cats", "dogs", "minibus"]
    assert sum(dataset["stats"]["negatives"].values()) == len(negatives)
    job_id = _start(
        client, dataset_id=dataset["id"], epochs=1, head_epochs=2, model_name="pairs", **TINY
    )
    job = _finished(client, job_id, log)
    assert job["status"] == "succeeded", (job["error"], log.read_text()[-3000:])
    result = job["result"]
    evaluation = client.get(f"/jobs/{job_id}/metrics").json()["evaluation"]
    # the test split's negatives are evaluated too (every label's answer is "no")
    assert evaluation["task"] == "multilabel" and evaluation["samples"] == 12
    assert 0.0 <= evaluation["mean_average_precision"] <= 1.0
    assert set(evaluation["per_class"]["car"]) >= {"threshold", "average_precision"}
    assert evaluation["calibration"]["method"] == "platt"
    for candidate in result["candidates"]:
        if candidate.get("validation"):
            assert set(candidate["validation"]) == {"mean_average_precision", "loss"}
    assert client.get(f"/jobs/{job_id}/confusion.png").status_code == 409
    version = client.get("/models/pairs/versions/1").json()
    thresholds = version["metrics_summary"]["thresholds"]
    # image by image: the labels at or over their thresholds, right when all of them are
    page = client.get(f"/jobs/{job_id}/predictions").json()
    assert page["evaluated"] == 12
    assert page["correct"] == round(evaluation["accuracy"] * 12)
    for item in page["items"]:
        answered = [x for x, p in item["probabilities"].items() if p >= thresholds[x] - 1e-6]
        assert item["predicted_labels"] == answered
        assert item["correct"] is (set(answered) == set(item["true_labels"]))
    assert any(not item["true_labels"] for item in page["items"])  # the negatives, too
    assert set(thresholds) == set(dataset["class_names"])
    photo = folder / "images" / "test-0000.jpg"
    answer = client.post(
        "/predict", files={"file": (photo.name, photo.read_bytes())}, data={"model": "pairs"}
    )
    assert answer.status_code == 200, answer.text
    prediction = answer.json()["predictions"][0]
    assert [x["threshold"] for x in prediction["labels"]] == [
        pytest.approx(thresholds[x["label"]], abs=1e-6) for x in prediction["labels"]
    ]
    assert prediction["labels_above_threshold"] == [
        x["label"] for x in prediction["labels"] if x["above_threshold"]
    ]


def test_negative_examples_train_the_unknown_answer_of_a_multiclass_model(
    stack, tmp_path: Path
) -> None:
    """A `_negative/` folder of flower photos beside cats and dogs: no class, counted apart,
    and compared with by the model's unknown answer, which reports how many it learned from
    and the share of the held-out ones it turns away."""
    import zipfile

    client, log = stack
    flowers = sorted((SHARED / "data" / "flowers_small" / "train").rglob("*.jpg"))
    archive = tmp_path / "with-negatives.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for split, count in (("train", 12), ("validation", 12), ("test", 4)):
            for label in ("cats", "dogs"):
                for photo in sorted(
                    (SHARED / "data" / "cats_vs_dogs_small" / split / label).iterdir()
                )[:count]:
                    zipped.write(photo, f"{split}/{label}/{photo.name}")
        for index, photo in enumerate(flowers[:16]):
            split = ("train", "train", "validation", "test")[index % 4]
            zipped.write(photo, f"{split}/_negative/{photo.name}")
    response = client.post(
        "/datasets", files={"file": ("n.zip", archive.read_bytes())}, data={"name": "negatives"}
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["class_names"] == ["cats", "dogs"]
    assert dataset["stats"]["negatives"] == {"train": 8, "validation": 4, "test": 4}
    job_id = _start(
        client,
        dataset_id=dataset["id"],
        method="bottleneck",
        epochs=2,
        model_name="negatives",
        **TINY,
    )
    job = _finished(client, job_id, log)
    assert job["status"] == "succeeded", (job["error"], log.read_text()[-3000:])
    outliers = job["result"]["evaluation"]["outliers"]
    assert outliers["negatives"] == 8
    assert outliers["held_out_negatives"] == 8
    assert 0.0 <= outliers["held_out_negatives_rejected"] <= 1.0
    # the negatives are no class: the model answers cats or dogs, never "_negative"
    photo = flowers[-1]
    answer = client.post(
        "/predict",
        files={"file": (photo.name, photo.read_bytes())},
        data={"model": "negatives", "version": "1"},  # (active or not: 32 px may stay at chance)
    ).json()
    assert {x["label"] for x in answer["predictions"][0]["labels"]} == {"cats", "dogs"}
    assert answer["outlier_threshold"] is not None
