"""`python -m app.cli storage-orphans`: what a crash left in storage (files without a row) is
found, on a folder and on a bucket, and removed on request; what the database knows stays."""

from __future__ import annotations

import hashlib

import pytest

from app.cli import main
from app.services.orphans import find_orphans, remove_orphans
from app.services.storage import get_storage
from tests.conftest import api_client, migrate
from tests.models import register_tiny_model
from tests.zips import class_folders, make_zip


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_files_without_rows_are_found_and_removed(
    backend: str, configure, sqlite_url: str, request: pytest.FixtureRequest, capsys
) -> None:
    bucket = request.getfixturevalue("s3_settings") if backend == "s3" else {}
    configure(database_url=sqlite_url, **bucket)
    migrate(sqlite_url)
    with api_client() as client:
        upload = client.post(
            "/datasets",
            files={"file": ("d.zip", make_zip(class_folders({"a": 10, "b": 10})))},
            data={"name": "kept"},
        )
        assert upload.status_code == 201, upload.text
    register_tiny_model("pets")
    storage = get_storage()
    # What crashes leave: a version's files without their manifest, a dataset's images
    # without a row, a review image without its item.
    storage.models.put_bytes("pets/v7/model.keras", b"half")
    storage.datasets.put_bytes("0123/images/aa/aa11", b"jpeg")
    storage.review.put_bytes("owner/aa/aa11", b"jpeg")

    assert find_orphans() == []  # all of it is younger than the grace period
    found = {(o.area, o.prefix, o.objects) for o in find_orphans(grace_seconds=0)}
    assert found == {
        ("models", "pets/v7", 1),
        ("datasets", "0123", 1),
        ("review", "owner/aa/aa11", 1),
    }

    assert main(["storage-orphans", "--grace-seconds", "0", "--delete"]) == 0
    assert "models/pets/v7\t1 objects" in capsys.readouterr().out
    assert find_orphans(grace_seconds=0) == []
    assert storage.models.exists("pets/v1/MANIFEST.json")
    assert storage.datasets.exists(f"{upload.json()['id']}/manifest.json")


def _old(path) -> None:
    import os
    import time

    past = time.time() - 7200
    os.utime(path, (past, past))


def test_features_and_exports_go_with_their_dataset_and_version(
    configure, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset version's cached features and a model version's exports are removed with
    them; what a crash left of either (and archives of older releases) is an orphan."""
    import uuid

    from app.core.config import get_settings
    from app.services import exports
    from app.services.storage import owner_key

    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600")
    migrate(sqlite_url)
    storage = get_storage()
    with api_client() as client:
        first = client.post(
            "/datasets",
            files={"file": ("d.zip", make_zip(class_folders({"a": 6, "b": 6})))},
            data={"name": "one"},
        ).json()
        twin = client.post(
            "/datasets",
            files={"file": ("d.zip", make_zip(class_folders({"a": 6, "b": 6})))},
            data={"name": "same images"},
        ).json()
        assert first["fingerprint"] == twin["fingerprint"]
        folder = owner_key("tester")  # the owner of api_client's key
        features = f"{folder}/{first['fingerprint']}-{'0' * 64}.npz"
        extractor = f"{folder}/extractor-{'1' * 64}.onnx"
        legacy = f"{folder}/{'2' * 64}.npz"
        for key in (features, extractor, legacy):
            storage.features.put_bytes(key, b"arrays")

        assert client.delete(f"/datasets/{first['id']}").status_code == 204
        assert storage.features.exists(features)  # the twin has the same images
        assert client.delete(f"/datasets/{twin['id']}").status_code == 204
        assert not storage.features.exists(features)
        assert storage.features.exists(extractor)

        register_tiny_model("pets", owner="tester")
        sent: list[str] = []
        monkeypatch.setattr(
            exports.tracking, "send_task", lambda name, *, args, queue: sent.extend(args)
        )
        assert (
            client.get(
                "/models/pets/versions/1/download", params={"format": "savedmodel"}
            ).status_code
            == 202
        )
        exports.run_export(export_id=uuid.UUID(sent[0]), worker_id="w/1")
        (ready,) = [k.key for k in storage.models.keys("pets/v1/exports/")]
        stray = "pets/v1/exports/savedmodel/crashed.tar.gz"  # no row names it
        storage.models.put_bytes(stray, b"half")
        legacy_archive = get_settings().data_dir / "exports" / f"{'3' * 64}-savedmodel.tar.gz"
        legacy_archive.parent.mkdir(parents=True)
        legacy_archive.write_bytes(b"old")
        for path in (
            storage.features.local_path(legacy),
            storage.models.local_path(stray),
            legacy_archive,
            storage.features.local_path(extractor),
        ):
            _old(path)

        found = {(o.area, o.prefix) for o in find_orphans()}
        assert found == {
            ("features", legacy),
            ("models", stray),
            ("legacy-exports", legacy_archive.name),
        }
        remove_orphans(find_orphans())
        assert find_orphans() == []
        assert storage.models.exists(ready) and storage.features.exists(extractor)
        assert not legacy_archive.exists()

        # A version's exports go with it.
        register_tiny_model("pets", owner="tester")  # v2, so that v1 can be deleted
        assert client.post("/models/pets/versions/2/activate").status_code == 200
        assert client.delete("/models/pets/versions/1").status_code == 204
        assert list(storage.models.keys("pets/v1/")) == []
        assert client.get("/models/pets/versions/1/exports").status_code == 404


def test_an_orphaned_review_image_captured_again_is_kept(configure, sqlite_url: str) -> None:
    """An image found orphaned, then predicted again (the capture finds its file there and
    does not write it): removing the orphans re-checks under the owner's lock and keeps it."""
    import uuid

    import numpy as np

    from app.db.models import ModelName
    from app.db.session import session_scope
    from app.services import auth, review
    from app.services.inference import ImagePayload
    from tests.zips import image_bytes

    configure(database_url=sqlite_url)
    migrate(sqlite_url)
    data = image_bytes(seed=5, size=(32, 32))
    digest = hashlib.sha256(data).hexdigest()
    key = review.image_key("alice", digest)
    storage = get_storage()
    storage.review.put_bytes(key, data)  # left by an item that was dropped in a crash
    _old(storage.review.local_path(key))
    orphans = find_orphans()
    assert [(o.area, o.prefix) for o in orphans] == [("review", key)]

    with session_scope() as session:
        session.add(ModelName(name="pets", owner="alice", last_version=1, review_threshold=0.99))
    review.THRESHOLDS.forget()
    principal = auth.Principal(key_id=uuid.uuid4(), owner="alice", scopes=frozenset({"predict"}))
    kept = review.capture_uncertain(
        principal=principal,
        model_name="pets",
        model_version=1,
        classes=["a", "b"],
        probabilities=np.array([[0.5, 0.5]], dtype=np.float32),
        images=[ImagePayload(data=data, filename="again.jpg")],
    )
    assert kept == 1
    remove_orphans(orphans)  # found before the capture
    assert storage.review.get_bytes(key) == data
