"""Dataset versions on SQLite and PostgreSQL: adding a zip (or removing images) makes a new,
immutable version with its lineage and diff, deduplicated and leakage-checked against the
existing splits; earlier versions stay as they were and trainable; jobs record the version."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.storage import get_storage
from tests.conftest import api_key, migrate
from tests.zips import class_folders, image_bytes, make_zip


@pytest.fixture(params=["sqlite", "postgresql", "sqlite+s3"])
def client(request: pytest.FixtureRequest, configure) -> Iterator[TestClient]:
    url = str(
        request.getfixturevalue("postgres_url" if request.param == "postgresql" else "sqlite_url")
    )
    bucket = request.getfixturevalue("s3_settings") if request.param.endswith("+s3") else {}
    configure(database_url=url, **bucket)
    migrate(url)
    with TestClient(create_app()) as test_client:
        test_client.headers["Authorization"] = f"Bearer {api_key('train', owner='alice')}"
        yield test_client


def _manifest(dataset_id: str) -> dict:
    return json.loads(get_storage().datasets.get_bytes(f"{dataset_id}/manifest.json"))


def _image(dataset_id: str, entry: dict) -> bytes:
    return get_storage().datasets.get_bytes(f"{dataset_id}/{entry['file']}")


def _add(client: TestClient, dataset_id: str, files: dict[str, bytes] | None = None, **fields):
    """POST /datasets/{id}/versions as multipart: the zip of `files` (if any) and `fields`."""
    parts: list[tuple[str, tuple[str | None, bytes | str]]] = [
        (name, (None, str(value))) for name, value in fields.items()
    ]
    if files is not None:
        parts.append(("file", ("add.zip", make_zip(files))))
    return client.post(f"/datasets/{dataset_id}/versions", files=parts)


def test_versions_add_and_remove_images_and_leave_the_earlier_ones_alone(client) -> None:
    upload = client.post(
        "/datasets",
        files={"file": ("d.zip", make_zip(class_folders({"cats": 10, "dogs": 10})))},
        data={"name": "pets"},
    )
    assert upload.status_code == 201, upload.text
    first = upload.json()
    first_manifest = _manifest(first["id"])
    by_split = {
        (entry["split"], entry["label"]): entry for entry in first_manifest["images"]
    }  # one of each
    validation_cat = by_split[("validation", "cats")]
    train_dog = by_split[("train", "dogs")]
    train_cat = by_split[("train", "cats")]

    added = {f"train/cats/new{i}.png": image_bytes("PNG", seed=9000 + i) for i in range(4)}
    response = _add(
        client,
        first["id"],
        {
            **added,
            "train/dogs/again.jpg": _image(first["id"], train_dog),  # a duplicate
            "train/cats/leak.jpg": _image(first["id"], validation_cat),  # in validation already
            "train/dogs/conflict.jpg": _image(first["id"], train_cat),  # a cat, as a dog
        },
    )
    assert response.status_code == 201, response.text
    second = response.json()
    assert second["version"] == 2
    assert second["lineage_id"] == first["id"] and second["parent_id"] == first["id"]
    assert second["name"] == "pets"
    diff = second["diff"]
    assert diff["added"] == {
        "count": 4,
        "per_class": {"cats": 4},
        "per_split": {"train": {"cats": 4}},
    }
    assert diff["removed"]["count"] == 0
    assert (diff["parent_id"], diff["parent_version"]) == (first["id"], 1)
    stats = second["stats"]
    assert stats["duplicates_removed"] == 1
    (leak,) = stats["leakage"]
    assert (leak["kept_in"], leak["removed_from"]) == ("validation", "train")
    (conflict,) = stats["label_conflicts"]
    assert conflict["labels"] == ["cats", "dogs"]
    # the existing images kept their splits and classes: v1's cat is still a training cat
    second_manifest = _manifest(second["id"])
    entries = {entry["sha256"]: entry for entry in second_manifest["images"]}
    assert entries[validation_cat["sha256"]]["split"] == "validation"
    assert entries[train_cat["sha256"]]["label"] == "cats"
    assert len(entries) == len(first_manifest["images"]) + 4
    assert second["split_counts"]["train"]["cats"] == first["split_counts"]["train"]["cats"] + 4
    assert second["fingerprint"] != first["fingerprint"]
    # every file of the new version is there and is what its name says
    for entry in second_manifest["images"]:
        assert len(_image(second["id"], entry)) > 0

    # v1 is untouched
    unchanged = client.get(f"/datasets/{first['id']}").json()
    for key in ("version", "fingerprint", "split_counts", "stats", "diff", "class_names"):
        assert unchanged[key] == first[key], key
    assert _manifest(first["id"]) == first_manifest

    # One class alone, without split folders, and a removal: a third version.
    response = _add(
        client,
        second["id"],
        {f"dogs/extra{i}.png": image_bytes("PNG", seed=9100 + i) for i in range(3)},
        remove=f"{train_cat['sha256']}, {validation_cat['sha256']}",
    )
    assert response.status_code == 201, response.text
    third = response.json()
    assert (third["version"], third["parent_id"]) == (3, second["id"])
    assert third["diff"]["added"]["per_class"] == {"dogs": 3}
    assert third["diff"]["removed"]["per_split"] == {
        "train": {"cats": 1},
        "validation": {"cats": 1},
    }
    assert (
        sum(
            third["diff"]["added"]["per_split"].get(s, {}).get("dogs", 0)
            for s in ("train", "validation", "test")
        )
        == 3
    )
    assert train_cat["sha256"] not in {e["sha256"] for e in _manifest(third["id"])["images"]}

    # Removal only; from an older version (a branch); nothing at all; unknown images.
    removal = _add(client, first["id"], remove=train_dog["sha256"])
    assert removal.status_code == 201, removal.text
    assert (removal.json()["version"], removal.json()["parent_id"]) == (4, third["id"])
    branch = _add(
        client, first["id"], {"cats/b.png": image_bytes("PNG", seed=9200)}, parent_version=1
    )
    assert branch.status_code == 201, branch.text
    assert (branch.json()["version"], branch.json()["parent_id"]) == (5, first["id"])
    nothing = _add(client, first["id"], {"cats/same.png": _image(first["id"], train_cat)})
    assert nothing.status_code == 400
    assert "would equal version 5" in nothing.json()["detail"]
    unknown = _add(client, first["id"], remove="0" * 64)
    assert unknown.status_code == 400 and "0" * 64 in unknown.json()["detail"]
    assert _add(client, first["id"], parent_version=99, remove="x").status_code == 404

    versions = client.get(f"/datasets/{third['id']}/versions").json()
    assert [v["version"] for v in versions] == [1, 2, 3, 4, 5]
    assert {v["lineage_id"] for v in versions} == {first["id"]}

    # Jobs: the latest version by default, any version on request; the job records which.
    latest = client.post("/jobs", json={"dataset_id": first["id"], "method": "scratch"})
    assert latest.status_code == 202, latest.text
    job = client.get(f"/jobs/{latest.json()['id']}").json()
    assert (job["dataset_id"], job["dataset_version"]) == (branch.json()["id"], 5)
    older = client.post(
        "/jobs", json={"dataset_id": third["id"], "dataset_version": 2, "method": "scratch"}
    )
    assert older.status_code == 202, older.text
    job = client.get(f"/jobs/{older.json()['id']}").json()
    assert (job["dataset_id"], job["dataset_version"]) == (second["id"], 2)
    assert "dataset_version" not in job["parameters"]
    missing = client.post("/jobs", json={"dataset_id": first["id"], "dataset_version": 9})
    assert missing.status_code == 404

    # Deleting v1 leaves the later versions whole, lineage and all.
    for job_id in (latest.json()["id"], older.json()["id"]):
        client.post(f"/jobs/{job_id}/cancel")
    assert client.delete(f"/datasets/{first['id']}").status_code == 204
    assert client.get(f"/datasets/{second['id']}").json()["lineage_id"] == first["id"]
    assert [v["version"] for v in client.get(f"/datasets/{second['id']}/versions").json()] == [
        2,
        3,
        4,
        5,
    ]
    for entry in _manifest(second["id"])["images"]:
        assert len(_image(second["id"], entry)) > 0


def test_another_owners_dataset_versions_are_404(client) -> None:
    upload = client.post(
        "/datasets",
        files={"file": ("d.zip", make_zip(class_folders({"cats": 4, "dogs": 4})))},
        data={"name": "pets"},
    )
    dataset_id = upload.json()["id"]
    bob = {"Authorization": f"Bearer {api_key('train', owner='bob')}"}
    assert client.get(f"/datasets/{dataset_id}/versions", headers=bob).status_code == 404
    add = client.post(
        f"/datasets/{dataset_id}/versions",
        files={"file": ("a.zip", make_zip({"cats/x.png": image_bytes("PNG", seed=77)}))},
        headers=bob,
    )
    assert add.status_code == 404
    job = client.post("/jobs", json={"dataset_id": dataset_id, "dataset_version": 1}, headers=bob)
    assert job.status_code == 404


def _upload_pets(client: TestClient, cats: int = 6, dogs: int = 6) -> dict:
    upload = client.post(
        "/datasets",
        files={"file": ("d.zip", make_zip(class_folders({"cats": cats, "dogs": dogs})))},
        data={"name": "pets"},
    )
    assert upload.status_code == 201, upload.text
    return dict(upload.json())


def test_a_version_needs_two_classes_as_an_upload_does(client) -> None:
    first = _upload_pets(client)
    images = _manifest(first["id"])["images"]
    every_image = " ".join(entry["sha256"] for entry in images)
    emptied = _add(client, first["id"], remove=every_image)
    assert emptied.status_code == 400, emptied.text
    assert emptied.json()["detail"] == (
        "a dataset needs images of at least 2 classes; the new version has 0"
    )
    cats = " ".join(entry["sha256"] for entry in images if entry["label"] == "cats")
    one_class = _add(client, first["id"], remove=cats)
    assert one_class.status_code == 400, one_class.text
    assert one_class.json()["detail"] == (
        "a dataset needs images of at least 2 classes; the new version has 1 (dogs)"
    )
    assert [v["version"] for v in client.get(f"/datasets/{first['id']}/versions").json()] == [1]


def test_a_version_adds_the_images_a_label_list_names(client) -> None:
    first = _upload_pets(client)
    files = {f"new/{i}.jpg": image_bytes(seed=900 + i) for i in range(3)}
    files["labels.csv"] = b"path,labels\nnew/0.jpg,cats\nnew/1.jpg,birds\nnew/2.jpg,cats\n"
    added = _add(client, first["id"], files, seed=1)
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["class_names"] == ["birds", "cats", "dogs"]
    assert body["diff"]["added"]["per_class"] == {"birds": 1, "cats": 2}


def test_a_version_racing_the_delete_of_its_parent_is_404(client, monkeypatch) -> None:
    """The version's images are linked slowly, so that the DELETE of its parent runs in the
    middle of it (it was a 500: FileNotFoundError)."""
    from app.services.datasets import versions

    first = _upload_pets(client, cats=12, dogs=12)
    linking = threading.Event()
    link = versions._link_or_copy

    def slow_link(source, target) -> None:
        linking.set()
        time.sleep(0.02)
        link(source, target)

    monkeypatch.setattr(versions, "_link_or_copy", slow_link)

    def add():
        return _add(client, first["id"], {"cats/new.png": image_bytes("PNG", seed=4242)})

    def delete():
        assert linking.wait(10)
        return client.delete(f"/datasets/{first['id']}")

    with ThreadPoolExecutor(2) as pool:
        added, deleted = pool.submit(add), pool.submit(delete)
        added_response, deleted_response = added.result(), deleted.result()
    assert deleted_response.status_code == 204, deleted_response.text
    assert added_response.status_code == 404, added_response.text
    assert "was deleted while the new version was being made" in added_response.json()["detail"]
    assert client.get(f"/datasets/{first['id']}").status_code == 404


def test_a_version_whose_parent_row_went_before_its_lock_is_404(client, monkeypatch) -> None:
    """The parent's row deleted after its images were linked (the links survive): the new
    version is refused under the lineage's lock instead of being numbered as a v1."""
    from app.services.datasets import versions

    first = _upload_pets(client)
    numbered = versions._version_diff

    def delete_then_diff(*args, **kwargs):
        assert client.delete(f"/datasets/{first['id']}").status_code == 204
        return numbered(*args, **kwargs)

    monkeypatch.setattr(versions, "_version_diff", delete_then_diff)
    response = _add(client, first["id"], {"cats/new.png": image_bytes("PNG", seed=4343)})
    assert response.status_code == 404, response.text
    assert "version 1 of the dataset was deleted" in response.json()["detail"]
