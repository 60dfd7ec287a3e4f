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


def test_a_new_version_can_bring_unlabeled_images_alone(configure, sqlite_url: str) -> None:
    """A zip of only `_unlabeled/` adds images waiting for labels to a new version, minus a
    copy of a labeled one; the labeled images and the fingerprint's labeled part stay."""
    configure(database_url=sqlite_url)
    migrate(sqlite_url)
    with TestClient(create_app()) as client:
        headers = {"Authorization": f"Bearer {api_key('train')}"}
        first = client.post(
            "/datasets", files={"file": ("d.zip", _zip(3, 0))}, data={"name": "d"}, headers=headers
        ).json()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for index in range(4):
                archive.writestr(
                    f"_unlabeled/new-{index}.png", image_bytes("PNG", seed=7000 + index)
                )
            archive.writestr("_unlabeled/copy.png", image_bytes("PNG", seed=0))  # cats/0.png
        added = client.post(
            f"/datasets/{first['id']}/versions",
            files={"file": ("u.zip", buffer.getvalue())},
            headers=headers,
        )
        assert added.status_code == 201, added.text
        version = added.json()
        assert version["stats"]["unlabeled_count"] == 4
        assert version["stats"]["image_count"] == first["stats"]["image_count"]
        assert version["diff"]["unlabeled_added"] == 4 and version["diff"]["added"]["count"] == 0
        assert version["fingerprint"] != first["fingerprint"]
        assert any(d["file"] == "_unlabeled/copy.png" for d in version["stats"]["duplicates"])
        removed = client.post(
            f"/datasets/{version['id']}/labels",
            json={"remove": [load_manifest_ids(version["id"])[0]]},
            headers=headers,
        )
        assert removed.status_code == 201, removed.text
        assert removed.json()["diff"]["unlabeled_removed"] == 1
        assert removed.json()["stats"]["unlabeled_count"] == 3


def load_manifest_ids(dataset_id: str) -> list[str]:
    from app.services.datasets import load_manifest

    return [item["sha256"] for item in load_manifest(uuid.UUID(dataset_id))["unlabeled"]]


def test_a_failed_analysis_says_why_then_is_tried_again(configure, sqlite_url: str) -> None:
    """A worker's failure is a 503 naming it (not a 202 every poll forever); asked again five
    minutes after it, the analysis is queued again."""
    from datetime import timedelta

    from app.db.base import utcnow
    from app.db.models import DatasetAnalysis
    from app.db.session import session_scope
    from app.services.labeling import analyses

    configure(database_url=sqlite_url)
    migrate(sqlite_url)
    with TestClient(create_app()) as client:
        headers = {"Authorization": f"Bearer {api_key('train')}"}
        dataset_id = client.post(
            "/datasets", files={"file": ("d.zip", _zip(3, 2))}, data={"name": "d"}, headers=headers
        ).json()["id"]
        with session_scope() as session:
            session.add(
                DatasetAnalysis(
                    dataset_id=uuid.UUID(dataset_id),
                    status="failed",
                    error="WeightsNotFoundError: no mobilenet_v2 weights",
                    finished_at=utcnow(),
                )
            )
        failed = client.get(f"/datasets/{dataset_id}/suggestions", headers=headers)
        assert failed.status_code == 503 and failed.json()["error"] == "analysis_failed"
        assert "no mobilenet_v2 weights" in failed.json()["detail"]
        with session_scope() as session:
            row = session.query(DatasetAnalysis).one()
            row.finished_at = utcnow() - timedelta(seconds=analyses.RETRY_FAILED_AFTER_SECONDS + 1)
        again = client.get(f"/datasets/{dataset_id}/label-issues", headers=headers)
        assert again.status_code == 202 and again.json()["status"] == "queued", again.text
        assert again.headers["retry-after"] == str(analyses.RETRY_AFTER_SECONDS)
