"""Learning from mistakes, end to end on the real stack (API, a Celery worker on Redis,
PostgreSQL, real photos): train, predict photos the model is unsure of, label them from the
review queue, make the dataset's next version from them, train again; the new model version
says which dataset version it came from, and the first version is still trainable."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import worker_stack
from tests.processes import wait_job_finished
from tests.zips import PHOTOS, tiny_photo_zip

TINY = {"image_size": 32, "batch_size": 8, "base_model": "mobilenet", "seed": 3}
# Photos tiny_photo_zip does not use (it takes the first 8 training photos of each class).
NEW_PHOTOS = {
    label: sorted((PHOTOS / "train" / label).iterdir())[20:23] for label in ("cats", "dogs")
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request) -> Iterator[tuple[TestClient, Path]]:
    with worker_stack(
        tmp_path_factory.mktemp("review"),
        postgres_url=request.getfixturevalue("module_postgres_url"),
        redis_url=request.getfixturevalue("module_redis_url"),
        EXPORT_ONNX="false",
    ) as stack:
        yield stack


def _train(client: TestClient, log: Path, **request: object) -> dict:
    response = client.post(
        "/jobs", json={"method": "bottleneck", "epochs": 2, "model_name": "loop", **TINY, **request}
    )
    assert response.status_code == 202, response.text
    job = wait_job_finished(client, response.json()["id"], log=log, timeout=300)
    assert job["status"] == "succeeded", (job["error"], log.read_text()[-3000:])
    return job


def test_train_review_label_version_and_train_again(stack, tmp_path: Path) -> None:
    client, log = stack
    archive = tiny_photo_zip(tmp_path / "tiny.zip")
    upload = client.post(
        "/datasets", files={"file": ("tiny.zip", archive.read_bytes())}, data={"name": "loop"}
    )
    assert upload.status_code == 201, upload.text
    first = upload.json()

    job = _train(client, log, dataset_id=first["id"])
    assert job["dataset_version"] == 1
    assert job["result"]["dataset"]["version"] == 1
    model_version = job["result"]["model"]["version"]

    # Keep every answer the model is not certain of, from /predict and from /v1.
    assert client.put("/models/loop/review", json={"threshold": 1.0}).status_code == 200
    photos = {
        photo.name: (label, photo.read_bytes())
        for label in NEW_PHOTOS
        for photo in NEW_PHOTOS[label]
    }
    names = sorted(photos)
    answer = client.post(
        "/predict",
        files=[("files", (name, photos[name][1])) for name in names[:-1]],
        data={"model": "loop", "version": str(model_version)},
    )
    assert answer.status_code == 200, answer.text
    tf_serving = client.post(
        f"/v1/models/loop/versions/{model_version}:predict",
        json={"instances": [{"b64": base64.b64encode(photos[names[-1]][1]).decode()}]},
    )
    assert tf_serving.status_code == 200, tf_serving.text
    unsure = [
        p["filename"]
        for p in answer.json()["predictions"]
        if max(x["probability"] for x in p["labels"]) < 1.0
    ]
    unsure += [names[-1]] if max(tf_serving.json()["predictions"][0]) < 1.0 else []
    assert len(unsure) >= 4, answer.json()  # a two-epoch model on 16 photos is rarely certain

    items = client.get("/review/items", params={"model": "loop"}).json()
    assert len(items) == len(unsure)
    for item in items:
        assert item["model_version"] == model_version
        filename = item["filename"] or names[-1]  # /v1 images have no file name
        image = client.get(f"/review/items/{item['id']}/image")
        assert image.content == photos[filename][1]
        labeled = client.post(
            f"/review/items/{item['id']}/label", json={"label": photos[filename][0]}
        )
        assert labeled.status_code == 200, labeled.text
    assert client.get("/review/counts").json()["labeled"] == len(unsure)
    metrics = client.get("/metrics").text
    assert f'smallvision_review_items{{status="labeled"}} {float(len(unsure))}' in metrics

    response = client.post(
        f"/datasets/{first['id']}/versions/from-review",
        json={"model": "loop", "validation_fraction": 0, "test_fraction": 0},
    )
    assert response.status_code == 201, response.text
    second = response.json()
    assert (second["version"], second["parent_id"]) == (2, first["id"])
    assert second["diff"]["added"]["count"] == len(unsure)
    counts = client.get("/review/counts").json()  # the labeled items left the queue
    assert (counts["pending"], counts["labeled"], counts["bytes"]) == (0, 0, 0)

    # Train again on the dataset (its latest version, by default).
    retrained = _train(client, log, dataset_id=first["id"])
    assert (retrained["dataset_id"], retrained["dataset_version"]) == (second["id"], 2)
    assert retrained["result"]["dataset"] == {
        "id": second["id"],
        "name": "loop",
        "version": 2,
        "lineage_id": first["id"],
        "fingerprint": second["fingerprint"],
    }
    new_version = retrained["result"]["model"]["version"]
    assert new_version == model_version + 1
    versions = {v["version"]: v for v in client.get("/models/loop/versions").json()}
    assert versions[new_version]["metrics_summary"]["dataset"]["version"] == 2
    assert versions[model_version]["metrics_summary"]["dataset"]["version"] == 1
    # the evaluation is on the same test split: the review images went to training only
    assert retrained["result"]["evaluation"]["samples"] == job["result"]["evaluation"]["samples"]

    # The first version stays trainable.
    again = _train(client, log, dataset_id=second["id"], dataset_version=1, epochs=1)
    assert (again["dataset_id"], again["dataset_version"]) == (first["id"], 1)
