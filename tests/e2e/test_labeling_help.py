"""Labeling help end to end on real photos: unlabeled images in a dataset, suggestions of
which to label next, label issues, and labeling that makes a new version (a real worker
computes the features, on PostgreSQL and Redis)."""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import worker_stack
from tests.processes import wait_job_finished
from tests.zips import PHOTOS

LABELED_PER_CLASS = 16
UNLABELED_PER_CLASS = 12
FLIPPED = {"cats": 2, "dogs": 2}  # photos of the other class filed under this one


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request) -> Iterator[tuple[TestClient, Path]]:
    with worker_stack(
        tmp_path_factory.mktemp("labeling"),
        postgres_url=request.getfixturevalue("module_postgres_url"),
        redis_url=request.getfixturevalue("module_redis_url"),
        LABELING_IMAGE_SIZE="128",  # (the default, the base's 224 px, takes longer)
    ) as stack:
        yield stack


def _photos(label: str, start: int, count: int) -> list[Path]:
    return sorted((PHOTOS / "train" / label).iterdir())[start : start + count]


def _zip(flipped: dict[str, list[Path]], unlabeled: dict[str, list[Path]]) -> bytes:
    """Class folders of real photos (some filed under the wrong class), a `_unlabeled/`
    folder, and in it a copy of a labeled photo (a duplicate, dropped)."""
    buffer = io.BytesIO()
    other = {"cats": "dogs", "dogs": "cats"}
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in ("cats", "dogs"):
            for photo in _photos(label, 0, LABELED_PER_CLASS):
                archive.write(photo, f"pets/{label}/{photo.name}")
            for photo in flipped[other[label]]:
                archive.write(photo, f"pets/{label}/{photo.name}")
            for photo in unlabeled[label]:
                archive.write(photo, f"pets/_unlabeled/{photo.name}")
        archive.write(_photos("cats", 0, 1)[0], "pets/_unlabeled/again.jpg")
    return buffer.getvalue()


def _ready(client: TestClient, path: str, log: Path, **params: object) -> dict:
    """GET `path` until the analysis is ready: 202 with Retry-After while a worker works."""
    deadline = time.monotonic() + 240
    while True:
        response = client.get(path, params=params)
        if response.status_code == 200:
            return dict(response.json())
        assert response.status_code == 202, response.text
        assert int(response.headers["Retry-After"]) > 0
        assert response.json()["status"] in {"queued", "running"}
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(1)


def test_suggest_label_and_fix_labels_on_real_photos(stack) -> None:
    client, log = stack
    flipped = {label: _photos(label, 100, n) for label, n in FLIPPED.items()}
    unlabeled = {label: _photos(label, 40, UNLABELED_PER_CLASS) for label in ("cats", "dogs")}
    truth = {p.name: label for label, photos in unlabeled.items() for p in photos}
    response = client.post(
        "/datasets",
        files={"file": ("pets.zip", _zip(flipped, unlabeled))},
        data={"name": "pets", "seed": "3"},
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["stats"]["unlabeled_count"] == 2 * UNLABELED_PER_CLASS
    assert dataset["stats"]["image_count"] == 2 * (LABELED_PER_CLASS + 2)
    assert any(d["file"].endswith("again.jpg") for d in dataset["stats"]["duplicates"])
    dataset_id = dataset["id"]

    # Suggestions: every class has >= 10 labels, so the uncertain images, one per group.
    found = _ready(client, f"/datasets/{dataset_id}/suggestions", log, count=6)
    assert found["strategy"] == "uncertain_diverse" and "least sure" in found["why"]
    assert found["unlabeled"] == 2 * UNLABELED_PER_CLASS and found["labeled"] == 36
    assert len(found["items"]) == 6 and len({s["image_id"] for s in found["items"]}) == 6
    for suggestion in found["items"]:
        probabilities = [p["probability"] for p in suggestion["predicted"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert {p["label"] for p in suggestion["predicted"]} == {"cats", "dogs"}
        assert suggestion["reason"].startswith("unsure: ")
        assert client.get(suggestion["image_url"]).status_code == 200
    margins = [s["score"] for s in found["items"]]
    assert margins == sorted(margins)

    # Label issues: the photos filed under the wrong class come first.
    issues = _ready(client, f"/datasets/{dataset_id}/label-issues", log)
    names = {p.name for photos in flipped.values() for p in photos}
    sources = _sources(client, dataset_id)
    flagged = {sources[i["image_id"]] for i in issues["items"]}
    assert len(flagged & names) >= 3, (issues, names)
    assert issues["found"] <= 8  # and not much else
    for issue in issues["items"]:
        assert issue["suggested_label"] != issue["given_label"]
        assert issue["given_probability"] < issue["suggested_probability"]

    # Bad requests change nothing.
    some = found["items"][0]["image_id"]
    for body, expected in (
        ({"labels": [{"image_id": "0" * 64, "label": "cats"}]}, "has no image"),
        ({"labels": [{"image_id": some, "label": "horses"}]}, "not a class of the dataset"),
        ({"labels": [{"image_id": some, "labels": ["cats", "dogs"]}]}, "exactly one"),
        ({"labels": [{"image_id": some, "label": "cats"}], "remove": [some]}, "both removed"),
    ):
        answer = client.post(f"/datasets/{dataset_id}/labels", json=body)
        assert answer.status_code == 400 and expected in answer.json()["detail"], answer.text
    for body in (
        {"labels": [{"image_id": "not-a-sha", "label": "cats"}]},
        {"labels": [{"image_id": some, "label": "cats"}, {"image_id": some, "label": "dogs"}]},
        {"labels": []},
        {"labels": [{"image_id": some, "label": "x"}] * 10_001},
    ):
        assert client.post(f"/datasets/{dataset_id}/labels", json=body).status_code == 422
    for params in ({"count": 0}, {"count": 201}):
        assert client.get(f"/datasets/{dataset_id}/suggestions", params=params).status_code == 422
    assert len(client.get(f"/datasets/{dataset_id}/versions").json()) == 1

    # Label the suggestions and fix the issues in one new version.
    labels = [
        {"image_id": s["image_id"], "label": truth[sources[s["image_id"]]]} for s in found["items"]
    ]
    fixes = [
        {"image_id": i["image_id"], "label": i["suggested_label"]}
        for i in issues["items"]
        if sources[i["image_id"]] in names
    ]
    answer = client.post(f"/datasets/{dataset_id}/labels", json={"labels": labels + fixes})
    assert answer.status_code == 201, answer.text
    version = answer.json()
    assert version["version"] == 2 and version["parent_id"] == dataset_id
    assert version["diff"]["labeled"] == 6 and version["diff"]["relabeled"] == len(fixes)
    assert version["diff"]["added"]["count"] == 6
    assert version["stats"]["unlabeled_count"] == 2 * UNLABELED_PER_CLASS - 6
    assert version["stats"]["image_count"] == dataset["stats"]["image_count"] + 6
    manifest_sources = _sources(client, version["id"])
    assert not {s["image_id"] for s in found["items"]} - set(manifest_sources)
    # the new version has its own analysis: the labeled suggestions are not suggested again
    again = _ready(client, f"/datasets/{version['id']}/suggestions", log, count=6)
    assert not {s["image_id"] for s in again["items"]} & {s["image_id"] for s in found["items"]}
    assert again["answers_from"] == "a softmax regression on the labeled images' features"

    # How sure a trained model is, instead: its answers for every unlabeled image (version 1:
    # a 32 px model of 40 photos may stay at chance, then it is kept but not active).
    started = client.post(
        "/jobs",
        json={
            "dataset_id": version["id"],
            "method": "bottleneck",
            "image_size": 32,
            "model_name": "pets-help",
            "epochs": 2,
        },
    )
    assert started.status_code == 202, started.text
    job = wait_job_finished(client, started.json()["id"], log=log, timeout=240)
    assert job["status"] == "succeeded", job["error"]
    by_model = _ready(
        client, f"/datasets/{version['id']}/suggestions", log, count=4, model="pets-help", version=1
    )
    assert by_model["answers_from"] == "pets-help v1"
    first = by_model["items"][0]
    answer = client.post(
        "/predict",
        files={"file": ("x.jpg", _photo_of(first["image_id"], version["id"]))},
        data={"model": "pets-help", "version": "1", "detect_unknown": "false"},
    ).json()["predictions"][0]["labels"]
    assert first["predicted"][0]["label"] == answer[0]["label"]
    assert first["predicted"][0]["probability"] == pytest.approx(answer[0]["probability"], abs=1e-3)
    missing = client.get(
        f"/datasets/{version['id']}/suggestions", params={"model": "no-such-model"}
    )
    assert missing.status_code == 404


def test_few_labels_start_with_typical_images(stack) -> None:
    """5 labeled images per class: the cold start, where typical images of groups no labeled
    image is in come first."""
    client, log = stack
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in ("cats", "dogs"):
            for photo in _photos(label, 200, 5):
                archive.write(photo, f"{label}/{photo.name}")
            for photo in _photos(label, 220, 10):
                archive.write(photo, f"_unlabeled/{photo.name}")
    response = client.post(
        "/datasets",
        files={"file": ("few.zip", buffer.getvalue())},
        data={"name": "few", "validation_fraction": "0", "test_fraction": "0"},
    )
    assert response.status_code == 201, response.text
    dataset_id = response.json()["id"]
    found = _ready(client, f"/datasets/{dataset_id}/suggestions", log, count=4)
    assert found["strategy"] == "typical_diverse" and found["smallest_class"] == 5
    assert "fewer than 10" in found["why"]
    assert len(found["items"]) == 4
    assert all(s["reason"].startswith("typical of a group") for s in found["items"])


def _sources(client: TestClient, dataset_id: str) -> dict[str, str]:
    """Each image's sha256 -> its file name in the zip, from the version's manifest."""
    from app.services.datasets import load_manifest

    manifest = load_manifest(uuid.UUID(dataset_id))
    return {
        item["sha256"]: Path(item["source"]).name
        for item in [*manifest["images"], *manifest.get("unlabeled", [])]
    }


def _photo_of(image_id: str, dataset_id: str) -> bytes:
    from app.db.models import Dataset
    from app.db.session import session_scope
    from app.services.datasets import read_image
    from app.services.previews import image_entry

    with session_scope() as session:
        dataset = session.get(Dataset, uuid.UUID(dataset_id))
        assert dataset is not None
        return read_image(dataset, image_entry(dataset, image_id))
