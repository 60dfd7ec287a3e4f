"""The review queue on SQLite and PostgreSQL: predictions below a model's review threshold are
kept (from every protocol), listed, shown, labeled, discarded, counted, bounded per owner,
reported in /metrics, turned into a dataset version, and invisible to other owners (404)."""

from __future__ import annotations

import base64
import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.main import create_app
from tests.conftest import api_key, migrate
from tests.models import register_tiny_model
from tests.zips import image_bytes


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Caller:
    """The app as one owner's key sees it."""

    def __init__(self, client: TestClient, owner: str) -> None:
        self.client = client
        self.headers = _bearer(api_key("train", "predict", owner=owner))

    def get(self, path: str, **kwargs):
        return self.client.get(path, headers=self.headers, **kwargs)

    def post(self, path: str, **kwargs):
        return self.client.post(path, headers=self.headers, **kwargs)

    def put(self, path: str, **kwargs):
        return self.client.put(path, headers=self.headers, **kwargs)

    def delete(self, path: str, **kwargs):
        return self.client.delete(path, headers=self.headers, **kwargs)

    def predict(self, *images: tuple[str, bytes]) -> list[dict]:
        response = self.post(
            "/predict", files=[("files", image) for image in images], data={"model": "pets"}
        )
        assert response.status_code == 200, response.text
        return list(response.json()["predictions"])


def _app(configure, url: str, **settings: str) -> Iterator[TestClient]:
    configure(database_url=url, MODEL_REFRESH_SECONDS="3600", **settings)
    migrate(url)
    with TestClient(create_app()) as client:
        yield client


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, configure) -> Iterator[TestClient]:
    url = str(
        request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    )
    yield from _app(configure, url)


def _top(prediction: dict) -> float:
    return max(label["probability"] for label in prediction["labels"])


def _review_files() -> list[Path]:
    return [path for path in get_settings().review_dir.rglob("*") if path.is_file()]


def test_uncertain_predictions_are_kept_shown_labeled_and_discarded(client: TestClient) -> None:
    alice, bob = Caller(client, "alice"), Caller(client, "bob")
    register_tiny_model("pets", owner="alice")
    images = {f"img{seed}.jpg": image_bytes(seed=seed, size=(64, 64)) for seed in range(6)}

    # No threshold: nothing is kept.
    answers = alice.predict(*images.items())
    assert alice.get("/review/counts").json()["pending"] == 0
    assert alice.get("/models/pets/review").json() == {"model": "pets", "review_threshold": None}

    # A threshold between the answers: only the images below it are kept.
    tops = sorted(_top(answer) for answer in answers)
    assert tops[0] < tops[-1]
    threshold = (tops[2] + tops[3]) / 2
    response = alice.put("/models/pets/review", json={"threshold": threshold})
    assert response.status_code == 200, response.text
    assert response.json()["review_threshold"] == pytest.approx(threshold)
    answers = alice.predict(*images.items())
    below = {a["filename"]: a for a in answers if _top(a) < threshold}
    assert 0 < len(below) < len(images)

    items = alice.get("/review/items", params={"model": "pets"}).json()
    assert {item["filename"] for item in items} == set(below)
    assert [item["top_probability"] for item in items] == sorted(
        item["top_probability"] for item in items
    )  # least sure first
    item = items[0]
    answer = below[item["filename"]]
    assert (item["model_name"], item["model_version"], item["status"]) == ("pets", 1, "pending")
    for label in answer["labels"]:
        assert item["scores"][label["label"]] == pytest.approx(label["probability"], abs=1e-5)
    assert item["top_probability"] == pytest.approx(_top(answer), abs=1e-5)
    image = alice.get(f"/review/items/{item['id']}/image")
    assert image.status_code == 200
    assert image.content == images[item["filename"]]
    assert image.headers["content-type"] == "image/jpeg"
    assert image.headers["x-content-type-options"] == "nosniff"

    # The same images again refresh their items; the other protocols feed the queue too.
    alice.predict(*images.items())
    assert len(alice.get("/review/items").json()) == len(below)
    new_images = [image_bytes(seed=seed, size=(64, 64)) for seed in (100, 101, 102)]
    encoded = [base64.b64encode(image).decode() for image in new_images]
    v2_input = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [encoded[2]]}
    requests = [
        ("/predict/json", {"images": [{"b64": encoded[0]}], "model": "pets"}),
        ("/v1/models/pets:predict", {"instances": [{"b64": encoded[1]}]}),
        ("/v2/models/pets/infer", {"inputs": [v2_input]}),
    ]
    for path, body in requests:
        assert alice.post(path, json=body).status_code == 200, path
    alice.put("/models/pets/review", json={"threshold": 1.0})  # everything is below 1
    for path, body in requests:
        assert alice.post(path, json=body).status_code == 200, path
    kept = {item["image_sha256"]: item for item in alice.get("/review/items").json()}
    assert len(kept) == len(below) + 3
    counts = alice.get("/review/counts").json()
    assert counts["pending"] == len(below) + 3 and counts["labeled"] == 0
    assert counts["by_model"] == {"pets": {"pending": len(below) + 3, "labeled": 0}}
    assert counts["bytes"] == sum(item["image_bytes"] for item in kept.values())
    assert len(_review_files()) == len(kept)  # one file per image

    # Labels: one of the model's classes only.
    wrong = alice.post(f"/review/items/{item['id']}/label", json={"label": "horses"})
    assert wrong.status_code == 400 and "cats" in wrong.json()["detail"]
    labeled = alice.post(f"/review/items/{item['id']}/label", json={"label": "dogs"})
    assert labeled.status_code == 200, labeled.text
    assert (labeled.json()["status"], labeled.json()["label"]) == ("labeled", "dogs")
    assert alice.get("/review/items", params={"status": "labeled"}).json()[0]["id"] == item["id"]
    assert alice.get("/review/counts").json()["labeled"] == 1

    # Another owner sees none of it.
    other = next(i for i in kept.values() if i["id"] != item["id"])
    for method, path, body in [
        ("GET", f"/review/items/{other['id']}", None),
        ("GET", f"/review/items/{other['id']}/image", None),
        ("POST", f"/review/items/{other['id']}/label", {"label": "cats"}),
        ("DELETE", f"/review/items/{other['id']}", None),
        ("GET", "/models/pets/review", None),
        ("PUT", "/models/pets/review", {"threshold": None}),
    ]:
        response = bob.client.request(method, path, json=body, headers=bob.headers)
        assert response.status_code == 404, (method, path, response.text)
    assert bob.get("/review/items").json() == []
    assert bob.get("/review/counts").json()["pending"] == 0
    assert alice.get(f"/review/items/{other['id']}").json()["status"] == "pending"

    # Discarding removes the item and its image file.
    assert alice.delete(f"/review/items/{other['id']}").status_code == 204
    assert alice.get(f"/review/items/{other['id']}").status_code == 404
    assert len(_review_files()) == len(kept) - 1

    # The queue's size is in /metrics (admin).
    metrics = client.get("/metrics", headers=_bearer(api_key("admin"))).text
    assert f'smallvision_review_items{{status="pending"}} {float(len(kept) - 2)}' in metrics
    assert 'smallvision_review_items{status="labeled"} 1.0' in metrics
    assert "smallvision_review_bytes " in metrics

    # Without a threshold again, nothing more is kept.
    assert alice.put("/models/pets/review", json={"threshold": None}).status_code == 200
    alice.predict(("late.jpg", image_bytes(seed=999, size=(64, 64))))
    assert len(alice.get("/review/items").json()) == len(kept) - 1


def test_threshold_must_be_a_probability(client: TestClient) -> None:
    alice = Caller(client, "alice")
    register_tiny_model("pets", owner="alice")
    for bad in (0, -0.1, 1.5, "high"):
        response = alice.put("/models/pets/review", json={"threshold": bad})
        assert response.status_code == 422, response.text
    assert alice.put("/models/nothing/review", json={"threshold": 0.5}).status_code == 404


def _dropped(metrics: str) -> float:
    (line,) = [x for x in metrics.splitlines() if x.startswith("smallvision_review_dropped_total")]
    return float(line.split()[-1])


@pytest.fixture
def bounded_client(configure, sqlite_url: str) -> Iterator[TestClient]:
    yield from _app(configure, sqlite_url, REVIEW_MAX_ITEMS_PER_OWNER="3")


def test_the_queue_keeps_the_newest_items_and_labeled_ones_first(bounded_client) -> None:
    alice = Caller(bounded_client, "alice")
    register_tiny_model("pets", owner="alice")
    alice.put("/models/pets/review", json={"threshold": 1.0})
    admin = _bearer(api_key("admin"))
    dropped_before = _dropped(bounded_client.get("/metrics", headers=admin).text)

    images = [image_bytes(seed=seed, size=(64, 64)) for seed in range(6)]
    alice.predict(("first.jpg", images[0]))
    (first,) = alice.get("/review/items").json()
    alice.post(f"/review/items/{first['id']}/label", json={"label": "cats"})
    for index, image in enumerate(images[1:], start=1):
        alice.predict((f"img{index}.jpg", image))
    names = {item["filename"] for item in alice.get("/review/items").json()}
    # three at most: the labeled one stays; of the rest the newest two
    assert names == {"first.jpg", "img4.jpg", "img5.jpg"}
    assert len(_review_files()) == 3
    dropped = _dropped(bounded_client.get("/metrics", headers=admin).text) - dropped_before
    assert dropped == 3


@pytest.fixture
def byte_bounded_client(configure, sqlite_url: str) -> Iterator[TestClient]:
    # Room for two of the images below (each well under 20 kB), never three.
    yield from _app(configure, sqlite_url, REVIEW_MAX_BYTES_PER_OWNER=str(2 * 20_000 + 100))


def test_the_queue_is_bounded_in_bytes(byte_bounded_client) -> None:
    alice = Caller(byte_bounded_client, "alice")
    register_tiny_model("pets", owner="alice")
    alice.put("/models/pets/review", json={"threshold": 1.0})
    images = [image_bytes("PNG", seed=seed, size=(80, 80)) for seed in range(4)]
    assert all(19_000 < len(image) <= 20_000 for image in images), [len(i) for i in images]
    for index, image in enumerate(images):
        alice.predict((f"img{index}.png", image))
    counts = alice.get("/review/counts").json()
    assert counts["pending"] == 2
    assert counts["bytes"] <= counts["max_bytes"]
    names = {item["filename"] for item in alice.get("/review/items").json()}
    assert names == {"img2.png", "img3.png"}
    assert sum(path.stat().st_size for path in _review_files()) == counts["bytes"]


def _dataset_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for c, label in enumerate(("cats", "dogs")):
            for index in range(10):
                archive.writestr(
                    f"{label}/{index}.png", image_bytes("PNG", seed=500 + 50 * c + index)
                )
    return buffer.getvalue()


def test_labeled_items_become_the_next_dataset_version(client: TestClient) -> None:
    alice, bob = Caller(client, "alice"), Caller(client, "bob")
    register_tiny_model("pets", owner="alice")
    upload = alice.post("/datasets", files={"file": ("d.zip", _dataset_zip())}, data={"name": "d"})
    assert upload.status_code == 201, upload.text
    first = upload.json()
    assert (first["version"], first["lineage_id"], first["diff"]) == (1, first["id"], None)

    alice.put("/models/pets/review", json={"threshold": 1.0})
    images = {f"new{seed}.jpg": image_bytes(seed=seed, size=(64, 64)) for seed in range(3)}
    alice.predict(*images.items())
    items = {item["filename"]: item for item in alice.get("/review/items").json()}
    labels = {"new0.jpg": "cats", "new1.jpg": "dogs"}  # new2.jpg stays unlabeled
    for filename, label in labels.items():
        alice.post(f"/review/items/{items[filename]['id']}/label", json={"label": label})

    # Bob can neither use alice's dataset nor her items.
    assert bob.post(f"/datasets/{first['id']}/versions/from-review", json={}).status_code == 404
    bobs = bob.post("/datasets", files={"file": ("d.zip", _dataset_zip())}, data={"name": "b"})
    stolen = bob.post(
        f"/datasets/{bobs.json()['id']}/versions/from-review",
        json={"item_ids": [items["new0.jpg"]["id"]]},
    )
    assert stolen.status_code == 404, stolen.text

    response = alice.post(
        f"/datasets/{first['id']}/versions/from-review",
        json={"model": "pets", "validation_fraction": 0, "test_fraction": 0},
    )
    assert response.status_code == 201, response.text
    second = response.json()
    assert (second["version"], second["lineage_id"], second["parent_id"]) == (
        2,
        first["id"],
        first["id"],
    )
    assert second["diff"]["added"]["per_split"] == {"train": {"cats": 1, "dogs": 1}}
    assert second["diff"]["removed"]["count"] == 0
    for label in ("cats", "dogs"):
        assert second["split_counts"]["train"][label] == first["split_counts"]["train"][label] + 1
    assert second["fingerprint"] != first["fingerprint"]

    # The labeled items left the queue (their files with them); the unlabeled one stays.
    remaining = alice.get("/review/items").json()
    assert [item["filename"] for item in remaining] == ["new2.jpg"]
    assert len(_review_files()) == 1
    # No labeled items left: nothing to make a version of.
    again = alice.post(f"/datasets/{first['id']}/versions/from-review", json={})
    assert again.status_code == 400
    # An unlabeled item named explicitly is a conflict.
    unlabeled = alice.post(
        f"/datasets/{first['id']}/versions/from-review", json={"item_ids": [remaining[0]["id"]]}
    )
    assert unlabeled.status_code == 409, unlabeled.text


def _capture(owner: str, *images: bytes, classes: tuple[str, ...] = ("cats", "dogs")) -> int:
    """Keep these images for `owner` as a prediction below the threshold would."""
    import numpy as np

    from app.services import auth, review

    principal = auth.Principal(key_id=uuid.uuid4(), owner=owner, scopes=frozenset({"predict"}))
    images_sent = [review_image(data) for data in images]
    probabilities = np.full((len(images), len(classes)), 1.0 / len(classes), dtype=np.float32)
    return review.capture_uncertain(
        principal=principal,
        model_name="pets",
        model_version=1,
        classes=classes,
        probabilities=probabilities,
        images=images_sent,
    )


def review_image(data: bytes):
    from app.services.inference import ImagePayload

    return ImagePayload(data=data, filename="x.jpg")


def _set_threshold(owner: str, threshold: float = 0.99) -> None:
    from app.db.models import ModelName
    from app.db.session import session_scope
    from app.services import review

    with session_scope() as session:
        session.add(ModelName(name="pets", owner=owner, last_version=1, review_threshold=threshold))
    review.THRESHOLDS.forget()


def test_a_failed_commit_keeps_the_images_of_the_items_it_would_have_deleted(client) -> None:
    """Image files are removed only after the rows that used them are gone for good."""
    from sqlalchemy import select

    from app.db.models import ReviewItem
    from app.db.session import session_scope
    from app.services import review

    _set_threshold("alice")
    assert _capture("alice", image_bytes(seed=1, size=(64, 64))) == 1
    assert len(_review_files()) == 1

    def delete_then_fail() -> None:
        with session_scope() as session:
            ids = list(session.scalars(select(ReviewItem.id)))
            review.delete_items(session, owner="alice", item_ids=ids)
            raise RuntimeError("the commit fails")  # rolled back: the item stays

    with pytest.raises(RuntimeError):
        delete_then_fail()
    assert len(_review_files()) == 1  # and so does its image
    with session_scope() as session:
        ids = list(session.scalars(select(ReviewItem.id)))
        review.delete_items(session, owner="alice", item_ids=ids)
    assert _review_files() == []


def test_capture_writes_its_files_before_it_takes_the_write_lock(
    configure, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the owner's lock is the database's write lock: no file is written (and
    fsynced) while it is held, except one rewritten because it went meanwhile."""
    import sqlite3

    from app.services import review
    from app.services.storage import get_storage

    configure(database_url=sqlite_url)
    migrate(sqlite_url)
    _set_threshold("alice")
    database = sqlite_url.removeprefix("sqlite:///")
    store = get_storage().review
    put_bytes = store.put_bytes
    writes_under_lock: list[str] = []

    def put_and_check(key: str, data: bytes) -> None:
        probe = sqlite3.connect(database, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
        except sqlite3.OperationalError:
            writes_under_lock.append(key)
        finally:
            probe.close()
        put_bytes(key, data)

    monkeypatch.setattr(store, "put_bytes", put_and_check)
    assert _capture("alice", *(image_bytes(seed=s, size=(32, 32)) for s in range(8))) == 8
    assert writes_under_lock == []
    assert len(_review_files()) == 8
    assert review.remove_unused_images(owner="alice", digests=frozenset()) == 0


def test_a_class_name_as_long_as_the_columns_goes_through_review(client) -> None:
    """200 characters (the width of a review item's label columns) is kept and labeled on
    PostgreSQL too; a longer class folder name is refused at upload."""
    from tests.zips import class_folders, make_zip

    alice = Caller(client, "alice")
    long_name = "l" * 200
    register_tiny_model("pets", owner="alice", classes=(long_name, "short"))
    assert alice.put("/models/pets/review", json={"threshold": 0.999}).status_code == 200
    alice.predict(("a.jpg", image_bytes(seed=3, size=(64, 64))))
    (item,) = alice.get("/review/items").json()
    labeled = alice.post(f"/review/items/{item['id']}/label", json={"label": long_name})
    assert labeled.status_code == 200, labeled.text
    assert labeled.json()["label"] == long_name

    too_long = "m" * 201
    upload = alice.post(
        "/datasets",
        files={"file": ("d.zip", make_zip(class_folders({too_long: 3, "short": 3})))},
        data={"name": "long"},
    )
    assert upload.status_code == 400, upload.text
    assert "class folder names are at most 200 characters" in upload.json()["detail"]
