"""POST /predict and the model registry on SQLite, with real Keras models in the models store."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import api_client, migrate
from tests.models import register_tiny_model
from tests.zips import SHARED, image_bytes

PHOTOS = sorted((SHARED / "data" / "cats_vs_dogs_small" / "test" / "cats").iterdir())[:3]


@pytest.fixture
def client(serving_client):
    return serving_client


def _own_output(client: TestClient, folder: Path, photo: bytes) -> np.ndarray:
    """The downloaded model's own output on the file's pixels at their original size."""
    import keras

    from app.ml.images import decode_image, image_to_array

    download = client.get("/models/pets/versions/1/download")
    assert download.status_code == 200
    path = folder / "pets-v1.keras"
    path.write_bytes(download.content)
    model = keras.saving.load_model(path, compile=False)
    pixels = image_to_array(decode_image(photo, max_pixels=10**8).image).astype("float32")
    return np.asarray(model.predict(pixels[None], verbose=0))[0]


def test_prediction_equals_the_models_own_output_on_the_file(client, tmp_path: Path) -> None:
    # 128 px: the photo (at most 320 px) is not reduced before the model's own resize
    register_tiny_model("pets", image_size=128)
    photo = PHOTOS[0].read_bytes()
    response = client.post("/predict", files={"file": ("cat.jpg", photo, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("pets", 1)
    assert body["seconds"] > 0
    (prediction,) = body["predictions"]
    assert prediction["filename"] == "cat.jpg"
    labels = prediction["labels"]
    assert sorted(item["label"] for item in labels) == ["cats", "dogs"]
    assert labels[0]["probability"] >= labels[1]["probability"]
    assert sum(item["probability"] for item in labels) == pytest.approx(1.0, abs=1e-6)

    dog_probability = float(_own_output(client, tmp_path, photo)[0])  # one sigmoid unit
    returned = {item["label"]: item["probability"] for item in labels}
    assert returned["dogs"] == pytest.approx(dog_probability, abs=1e-5)
    assert returned["cats"] == pytest.approx(1 - dog_probability, abs=1e-5)


def test_an_exif_rotated_copy_gets_the_same_answer(client) -> None:
    register_tiny_model("pets", classes=("a", "b", "c"))
    upright = Image.open(PHOTOS[1]).convert("RGB")
    upright_png, rotated_png = io.BytesIO(), io.BytesIO()
    upright.save(upright_png, format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the stored pixels are turned 90 degrees CCW
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated_png, format="PNG", exif=exif)

    def answer(data: bytes) -> list[dict]:
        response = client.post("/predict", files={"file": ("x.png", data)}, data={"top_k": "3"})
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]["labels"]

    upright_answer, rotated_answer = answer(upright_png.getvalue()), answer(rotated_png.getvalue())
    assert [x["label"] for x in upright_answer] == [x["label"] for x in rotated_answer]
    for a, b in zip(upright_answer, rotated_answer, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)
    # A negative control: the same rotated pixels WITHOUT the EXIF tag are a different image.
    bare = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(bare, format="PNG")
    bare_answer = answer(bare.getvalue())
    assert (
        max(
            abs(a["probability"] - b["probability"])
            for a, b in zip(
                sorted(upright_answer, key=lambda x: x["label"]),
                sorted(bare_answer, key=lambda x: x["label"]),
                strict=True,
            )
        )
        > 1e-6
    )


def test_a_batch_answers_each_image_as_alone_and_json_matches_multipart(client) -> None:
    register_tiny_model("pets", classes=("a", "b", "c"))
    photos = [p.read_bytes() for p in PHOTOS]
    batch = client.post(
        "/predict",
        files=[("files", (p.name, p.read_bytes())) for p in PHOTOS],
        data={"top_k": "2", "model": "pets", "version": "1"},
    )
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    assert [p["filename"] for p in predictions] == [p.name for p in PHOTOS]
    assert all(len(p["labels"]) == 2 for p in predictions)
    for photo, in_batch in zip(photos, predictions, strict=True):
        alone = client.post("/predict", files={"file": ("x.jpg", photo)}, data={"top_k": "2"})
        for a, b in zip(alone.json()["predictions"][0]["labels"], in_batch["labels"], strict=True):
            assert a["label"] == b["label"]
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)

    as_json = client.post(
        "/predict/json",
        json={
            "top_k": 2,
            "images": [
                {"b64": base64.b64encode(photo).decode(), "filename": path.name}
                for photo, path in zip(photos, PHOTOS, strict=True)
            ],
        },
    )
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["predictions"] == predictions


def test_which_model_answers(client) -> None:
    response = client.post("/predict", files={"file": ("x.jpg", image_bytes())})
    assert response.status_code == 409
    assert "no trained model" in response.json()["detail"]

    register_tiny_model("pets")
    register_tiny_model("pets", seed=1)  # version 2, not active
    register_tiny_model("flowers", classes=("daisy", "rose"))

    def ask(**fields: str):
        return client.post("/predict", files={"file": ("x.jpg", image_bytes())}, data=fields)

    several = ask()
    assert several.status_code == 400
    assert "flowers, pets" in several.json()["detail"]
    assert (ask(model="pets").json()["model"], ask(model="pets").json()["version"]) == ("pets", 1)
    assert ask(model="pets", version="2").json()["version"] == 2
    assert ask(model="nobody").status_code == 404
    assert ask(model="pets", version="7").status_code == 404
    assert ask(version="1").status_code == 400
    assert ask(model="pets", top_k="0").status_code == 422
    bad = ask(model="pets", version="x")
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "version"]


def test_bad_images_are_json_errors_never_500(client, configure) -> None:
    register_tiny_model("pets")

    def send(data: bytes):
        return client.post("/predict", files={"file": ("x.bin", data)})

    not_image = send(b"just some text, not an image")
    assert not_image.status_code == 415
    assert not_image.json()["error"] == "unsupported_media_type"
    corrupt = send(image_bytes("JPEG", size=(64, 64))[:300])
    assert corrupt.status_code == 400
    assert "image 1 (x.bin)" in corrupt.json()["detail"]
    no_image = client.post("/predict", files={"model": (None, "pets")})  # multipart, no file
    assert no_image.status_code == 400
    assert client.post("/predict", data={"model": "pets"}).status_code == 415  # not multipart
    assert (
        client.post("/predict", content=b"{}", headers={"content-type": "text/plain"}).status_code
        == 415
    )
    bad_b64 = client.post("/predict/json", json={"images": [{"b64": "***"}]})
    assert bad_b64.status_code == 400


def test_oversized_images_are_413(configure, sqlite_url: str) -> None:
    configure(
        database_url=sqlite_url,
        MAX_IMAGE_PIXELS="1000",
        MAX_IMAGE_FILE_BYTES="20000",
        MAX_PREDICT_IMAGES="2",
    )
    migrate(sqlite_url)
    with api_client() as client:
        register_tiny_model("pets")
        many_pixels = client.post(
            "/predict", files={"file": ("x.png", image_bytes("PNG", size=(40, 40)))}
        )
        assert many_pixels.status_code == 413
        assert "over the limit of 1000" in many_pixels.json()["detail"]
        big_file = client.post("/predict", files={"file": ("x.bmp", b"B" * 30_000)})
        assert big_file.status_code == 413
        too_many = client.post(
            "/predict", files=[("files", ("x.png", image_bytes("PNG", size=(8, 8))))] * 3
        )
        assert too_many.status_code == 413
        assert "at most 2 images" in too_many.json()["detail"]


def test_registry_lists_activates_downloads_and_deletes(client) -> None:
    import hashlib

    first = register_tiny_model("pets")
    register_tiny_model("pets", seed=1)
    assert first.is_active

    models = client.get("/models").json()
    assert [
        (m["name"], m["versions"], m["latest_version"], m["active_version"]) for m in models
    ] == [("pets", 2, 2, 1)]
    versions = client.get("/models/pets/versions").json()
    assert [(v["version"], v["is_active"]) for v in versions] == [(2, False), (1, True)]
    assert versions[0]["metrics_summary"] == {"test_accuracy": None}
    assert client.get("/models/nobody/versions").status_code == 404

    photo = PHOTOS[0].read_bytes()
    before = client.post("/predict", files={"file": ("x.jpg", photo)}).json()
    assert before["version"] == 1
    activated = client.post("/models/pets/versions/2/activate")
    assert activated.status_code == 200 and activated.json()["is_active"]
    after = client.post("/predict", files={"file": ("x.jpg", photo)}).json()
    assert after["version"] == 2
    assert after["predictions"] != before["predictions"]  # a different model answered
    assert [v["is_active"] for v in client.get("/models/pets/versions").json()] == [True, False]

    download = client.get("/models/pets/versions/1/download")
    assert download.status_code == 200
    assert 'filename="pets-v1.keras"' in download.headers["content-disposition"]
    from app.services.model_versions import model_store

    manifest = model_store().read_manifest("pets/v1")
    assert (
        hashlib.sha256(download.content).hexdigest() == manifest["files"]["model.keras"]["sha256"]
    )

    assert client.delete("/models/pets/versions/2").status_code == 409  # active
    assert client.delete("/models/pets/versions/1").status_code == 204
    assert client.get("/models/pets/versions/1").status_code == 404
    assert list(model_store().objects.keys("pets/v1/")) == []
    assert client.delete("/models/pets/versions/1").status_code == 404


def test_a_tampered_version_is_never_loaded_or_activated(client) -> None:
    from app.services.model_versions import model_store

    register_tiny_model("pets")
    register_tiny_model("pets", seed=1)
    model_file = model_store().objects.local_path("pets/v2/model.keras")
    assert model_file is not None
    model_file.write_bytes(model_file.read_bytes() + b"tampered")

    refused = client.post("/models/pets/versions/2/activate")
    assert refused.status_code == 503
    assert "changed" in refused.json()["detail"]
    assert client.get("/models/pets/versions/2").json()["is_active"] is False
    assert client.get("/models/pets/versions/2/download").status_code == 503
    direct = client.post(
        "/predict", files={"file": ("x.jpg", image_bytes())}, data={"model": "pets", "version": "2"}
    )
    assert direct.status_code == 503
    assert client.post("/predict", files={"file": ("x.jpg", image_bytes())}).status_code == 200


def test_warm_models_are_never_loaded_on_the_request_path(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="0.2")
    migrate(sqlite_url)
    first = register_tiny_model("pets")
    with api_client() as client:
        cache = client.app.state.model_cache
        deadline = time.monotonic() + 60
        while not cache.is_loaded(first.id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.is_loaded(first.id), "the active version was not loaded at start-up"
        loads = cache.loads
        for _ in range(3):
            assert (
                client.post("/predict", files={"file": ("x.jpg", image_bytes())}).status_code == 200
            )
        assert cache.loads == loads

        # A version trained later (here: registered by another process's code path) is loaded
        # by the background refresh once it is active, before anyone asks for it.
        second = register_tiny_model("flowers", classes=("daisy", "rose"))
        while not cache.is_loaded(second.id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.is_loaded(second.id)


def test_inference_does_not_block_the_event_loop(client) -> None:
    register_tiny_model("pets")
    client.post("/predict", files={"file": ("x.jpg", image_bytes())})  # loaded
    cache = client.app.state.model_cache
    (classifier,) = [cache.get_loaded(version_id) for version_id in cache.loaded_ids()]
    original = classifier.batcher._forward
    inside, release = threading.Event(), threading.Event()

    def held_forward(pixels: np.ndarray) -> np.ndarray:
        inside.set()
        assert release.wait(30)  # held until /health has answered
        return original(pixels)

    classifier.batcher._forward = held_forward
    held = threading.Thread(
        target=lambda: client.post("/predict", files={"file": ("x.jpg", image_bytes())})
    )
    held.start()
    try:
        assert inside.wait(30)  # the prediction is inside its forward pass, and stays there
        # If inference held the event loop, this could not be answered before the release.
        assert client.get("/health").status_code == 200
        assert held.is_alive() and not release.is_set()
    finally:
        release.set()
        held.join()
        classifier.batcher._forward = original


def test_json_round_trip_of_errors_is_the_common_shape(client) -> None:
    response = client.post("/predict/json", json={"images": []})
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert json.loads(response.text)["detail"][0]["loc"][:2] == ["body", "images"]


def test_a_prediction_that_gets_no_answer_is_a_503_not_a_hang(configure, sqlite_url) -> None:
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600", PREDICT_TIMEOUT_SECONDS="1")
    migrate(sqlite_url)
    with api_client() as client:
        register_tiny_model("pets")
        client.post("/predict", files={"file": ("x.jpg", image_bytes())})  # loaded
        cache = client.app.state.model_cache
        (classifier,) = [cache.get_loaded(version_id) for version_id in cache.loaded_ids()]
        original = classifier.batcher._forward
        release = threading.Event()

        def wedged(pixels: np.ndarray) -> np.ndarray:
            release.wait(10)
            return original(pixels)

        classifier.batcher._forward = wedged
        started = time.perf_counter()
        response = client.post("/predict", files={"file": ("x.jpg", image_bytes())})
        release.set()
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "model_unavailable"
        assert time.perf_counter() - started < 5
        classifier.batcher._forward = original


def _submit_while_closing(round_: int) -> tuple[int, int, int]:
    """4 threads submit 50 requests each while the batcher is closed: (answered, refused,
    never answered)."""
    from concurrent.futures import wait

    from app.ml.serving import MicroBatcher, ModelUnloadedError

    batcher = MicroBatcher(lambda x: x * 2, max_batch=4, name=f"race-{round_}")
    futures, refused, lock = [], 0, threading.Lock()
    start = threading.Barrier(5)

    def client() -> None:
        nonlocal refused
        start.wait()
        for _ in range(50):
            try:
                future = batcher.submit(np.ones((1, 2)))
            except ModelUnloadedError:
                with lock:
                    refused += 1
                continue
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    batcher.close()
    for thread in threads:
        thread.join()
    done, pending = wait(futures, timeout=5)
    return len(done), refused, len(pending)


def test_requests_racing_an_unload_are_all_answered() -> None:
    """submit() and close() at once: every request queued is answered (a result or "unloaded"),
    none is left waiting forever behind the stop marker."""
    for round_ in range(30):
        answered, refused, never = _submit_while_closing(round_)
        assert never == 0, f"round {round_}: {never} requests never answered"
        assert answered + refused == 200
