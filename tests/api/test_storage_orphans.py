"""`python -m app.cli storage-orphans`: what a crash left in storage (files without a row) is
found, on a folder and on a bucket, and removed on request; what the database knows stays."""

from __future__ import annotations

import pytest

from app.cli import main
from app.services.orphans import find_orphans
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
            "/datasets", files={"file": ("d.zip", make_zip(class_folders({"a": 10, "b": 10})))},
            data={"name": "kept"},
        )  # fmt: skip
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
    assert found == {("models", "pets/v7", 1), ("datasets", "0123", 1),
                     ("review", "owner/aa/aa11", 1)}  # fmt: skip

    assert main(["storage-orphans", "--grace-seconds", "0", "--delete"]) == 0
    assert "models/pets/v7\t1 objects" in capsys.readouterr().out
    assert find_orphans(grace_seconds=0) == []
    assert storage.models.exists("pets/v1/MANIFEST.json")
    assert storage.datasets.exists(f"{upload.json()['id']}/manifest.json")
