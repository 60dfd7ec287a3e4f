"""`explain=true` on /predict and /predict/json: a Grad-CAM overlay per image, also GET-able,
for its owner only."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.conftest import api_client, auth_headers, migrate
from tests.models import register_tiny_model
from tests.zips import SHARED

PHOTO_FILE = SHARED / "data" / "cats_vs_dogs_small" / "test" / "dogs" / "dog.4553.jpg"


@pytest.fixture
def client(serving_client):
    return serving_client


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_explain_returns_an_overlay_per_image_kept_for_its_owner(client) -> None:
    register_tiny_model("pets", image_size=64)
    photo = PHOTO_FILE.read_bytes()
    plain = client.post("/predict", files={"file": ("dog.jpg", photo)})
    assert plain.status_code == 200
    assert plain.json()["predictions"][0]["explanation"] is None  # off by default

    response = client.post(
        "/predict",
        files=[("files", ("dog.jpg", photo)), ("files", ("small.png", _small_png()))],
        data={"explain": "true", "top_k": "2"},
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    for prediction in (first, second):
        explanation = prediction["explanation"]
        top = prediction["labels"][0]
        assert explanation["label"] == top["label"]
        assert explanation["probability"] == pytest.approx(top["probability"], abs=1e-4)
    overlay = _png(base64.b64decode(first["explanation"]["png_base64"]))
    with Image.open(PHOTO_FILE) as original:  # the overlay is on the image as decoded
        assert overlay.size == original.size
    assert _png(base64.b64decode(second["explanation"]["png_base64"])).size == (40, 30)

    served = client.get(first["explanation"]["url"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == base64.b64decode(first["explanation"]["png_base64"])
    other_owner = auth_headers("predict", owner="someone-else")
    assert client.get(first["explanation"]["url"], headers=other_owner).status_code == 404
    assert client.get("/explanations/not-an-id.png").status_code == 422


def test_json_predictions_explain_too_and_the_store_is_bounded(configure, sqlite_url) -> None:
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600", MAX_EXPLANATIONS_PER_OWNER="2")
    migrate(sqlite_url)
    register_tiny_model("pets", image_size=64, classes=("a", "b", "c"))
    with api_client() as client:
        urls = _explain_three_times(client)
        assert [client.get(url).status_code for url in urls] == [404, 200, 200]  # oldest gone


def _explain_three_times(client, image: bytes | None = None) -> list[str]:
    urls = []
    for _ in range(3):
        encoded = base64.b64encode(image or _small_png()).decode()
        response = client.post(
            "/predict/json", json={"images": [{"b64": encoded}], "explain": True}
        )
        assert response.status_code == 200, response.text
        urls.append(response.json()["predictions"][0]["explanation"]["url"])
    return urls


def _small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_overlay_keeps_the_images_shape_at_a_bounded_size(client) -> None:
    """A long thin image is reduced more along its length for the model; its overlay is
    drawn at the file's own aspect ratio, at most 512 px on its longer side."""
    register_tiny_model("pets", image_size=32)
    buffer = io.BytesIO()
    Image.effect_noise((6000, 300), 60).convert("RGB").save(buffer, format="PNG")
    response = client.post(
        "/predict", files={"file": ("strip.png", buffer.getvalue())}, data={"explain": "true"}
    )
    assert response.status_code == 200, response.text
    explanation = response.json()["predictions"][0]["explanation"]
    assert _png(base64.b64decode(explanation["png_base64"])).size == (512, 26)


def test_explanations_per_request_are_capped(configure, sqlite_url) -> None:
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600", MAX_EXPLAINED_IMAGES="2")
    migrate(sqlite_url)
    register_tiny_model("pets", image_size=32)
    with api_client() as client:
        files = [("files", (f"{i}.png", _small_png())) for i in range(3)]
        refused = client.post("/predict", files=files, data={"explain": "true"})
        assert refused.status_code == 413, refused.text
        assert "explain=true takes at most 2 images per request" in refused.json()["detail"]
        assert client.post("/predict", files=files).status_code == 200  # without it: fine


def test_the_store_of_explanations_is_bounded_in_bytes(configure, sqlite_url) -> None:
    configure(
        database_url=sqlite_url,
        MODEL_REFRESH_SECONDS="3600",
        MAX_EXPLANATION_BYTES_PER_OWNER="8000",
    )
    migrate(sqlite_url)
    register_tiny_model("pets", image_size=64, classes=("a", "b", "c"))
    buffer = io.BytesIO()
    Image.effect_noise((40, 30), 90).convert("RGB").save(buffer, format="PNG")
    with api_client() as client:
        urls = _explain_three_times(client, buffer.getvalue())
        sizes = [len(client.get(url).content) for url in urls[1:]]
        assert 2 * max(sizes) < 8000 < 3 * min(sizes), sizes  # room for two of them
        assert client.get(urls[0]).status_code == 404
