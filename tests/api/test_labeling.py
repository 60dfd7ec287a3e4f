"""Labeling help's inputs: unlabeled images count against a dataset's image limit, and
another owner's dataset is not there for suggestions, label issues, labels or thumbnails."""

from __future__ import annotations

import io
import uuid
import zipfile

from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import api_key, migrate
from tests.zips import image_bytes


def _zip(labeled_per_class: int, unlabeled: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, offset in (("cats", 0), ("dogs", 1000)):
            for index in range(labeled_per_class):
                archive.writestr(f"{label}/{index}.png", image_bytes("PNG", seed=offset + index))
        for index in range(unlabeled):
            archive.writestr(f"_unlabeled/{index}.png", image_bytes("PNG", seed=5000 + index))
    return buffer.getvalue()


def test_unlabeled_images_count_against_the_image_limit(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url, MAX_DATASET_IMAGES="8")
    migrate(sqlite_url)
    with TestClient(create_app()) as client:
        headers = {"Authorization": f"Bearer {api_key('train')}"}
        refused = client.post(
            "/datasets", files={"file": ("d.zip", _zip(3, 3))}, data={"name": "d"}, headers=headers
        )
        assert refused.status_code == 413 and "at most 8" in refused.json()["detail"]
        accepted = client.post(
            "/datasets", files={"file": ("d.zip", _zip(3, 2))}, data={"name": "d"}, headers=headers
        )
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["stats"]["unlabeled_count"] == 2
        assert accepted.json()["stats"]["image_count"] == 6


def test_another_owners_dataset_is_not_found(configure, sqlite_url: str) -> None:
    from app.services.datasets import load_manifest

    configure(database_url=sqlite_url)
    migrate(sqlite_url)
    with TestClient(create_app()) as client:
        mine = {"Authorization": f"Bearer {api_key('train', owner='lab')}"}
        theirs = {"Authorization": f"Bearer {api_key('train', owner='rival')}"}
        uploaded = client.post(
            "/datasets", files={"file": ("d.zip", _zip(3, 2))}, data={"name": "d"}, headers=mine
        )
        assert uploaded.status_code == 201, uploaded.text
        dataset_id = uploaded.json()["id"]
        image = load_manifest(uuid.UUID(dataset_id))["unlabeled"][0]["sha256"]
        for method, path, body in (
            ("GET", f"/datasets/{dataset_id}/suggestions", None),
            ("GET", f"/datasets/{dataset_id}/label-issues", None),
            ("GET", f"/datasets/{dataset_id}/images/{image}/thumbnail", None),
            (
                "POST",
                f"/datasets/{dataset_id}/labels",
                {"labels": [{"image_id": image, "label": "cats"}]},
            ),
        ):
            answer = client.request(method, path, json=body, headers=theirs)
            assert answer.status_code == 404, (path, answer.text)
        own = client.get(f"/datasets/{dataset_id}/images/{image}/thumbnail", headers=mine)
        assert own.status_code == 200 and own.headers["content-type"] == "image/jpeg"
        labeled = client.post(
            f"/datasets/{dataset_id}/labels",
            json={"labels": [{"image_id": image, "label": "cats"}]},
            headers=mine,
        )
        assert labeled.status_code == 201, labeled.text
        assert labeled.json()["stats"]["unlabeled_count"] == 1
        assert labeled.json()["diff"]["labeled"] == 1
