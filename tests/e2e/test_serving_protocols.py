"""Clients people already have, against a live server (uvicorn on loopback, PostgreSQL):
the unmodified `tritonclient[http]` (Open Inference Protocol v2) and TF Serving's REST API."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from app.core.config import ENV_PREFIX
from tests.conftest import auth_headers, migrate, reset_caches
from tests.models import register_tiny_model
from tests.processes import free_port, running_api, wait_until
from tests.zips import SHARED

PHOTOS = [
    p.read_bytes()
    for p in sorted((SHARED / "data" / "cats_vs_dogs_small" / "test" / "dogs").iterdir())[:3]
]
FLOWERS = ("daisy", "rose", "tulip")
HEADERS: dict[str, str] = {}  # a predict-scope key, made once the database exists


def _headers() -> dict[str, str]:
    """A copy for tritonclient, which adds its own entries to the dict it is given."""
    return dict(HEADERS)


@pytest.fixture(scope="module")
def server(tmp_path_factory, request) -> Iterator[str]:
    """Two registered models ("pets": 2 classes, "flowers": 3) and a live API serving them."""
    postgres_url = request.getfixturevalue("module_postgres_url")
    tmp = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {
            "DATA_DIR": str(tmp / "data"),
            "ENVIRONMENT": "test",
            "DATABASE_URL": postgres_url,
        }.items():
            patch.setenv(ENV_PREFIX + key, value)
        reset_caches()
        migrate(postgres_url)
        register_tiny_model("pets", owner="shop")
        register_tiny_model("flowers", classes=FLOWERS, owner="shop")
        HEADERS.update(auth_headers("predict", owner="shop"))
        log = tmp / "api.log"
        with running_api(log, port=free_port()) as base:
            wait_until(
                lambda: httpx.get(f"{base}/v2/health/ready").status_code == 200,
                timeout=120,
                what="the active models to be loaded",
                log=log,
            )
            yield base
    reset_caches()


def _reference(base: str, model: str) -> np.ndarray:
    """Probabilities from POST /predict, in label order, for PHOTOS."""
    response = httpx.post(
        f"{base}/predict",
        headers=HEADERS,
        files=[("files", (f"{i}.jpg", photo)) for i, photo in enumerate(PHOTOS)],
        data={"model": model, "top_k": "10"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    labels = FLOWERS if model == "flowers" else ("cats", "dogs")
    return np.array(
        [
            [next(x["probability"] for x in p["labels"] if x["label"] == label) for label in labels]
            for p in response.json()["predictions"]
        ]
    )


def _images_input(binary: bool):
    import tritonclient.http as triton

    image = triton.InferInput("image", [len(PHOTOS)], "BYTES")
    if binary:  # the client's default: raw file bytes in the binary tensor extension
        image.set_data_from_numpy(np.array(PHOTOS, dtype=np.object_))
    else:  # JSON tensors carry strings: base64 of the files
        encoded = [base64.b64encode(photo) for photo in PHOTOS]
        image.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    return image


def test_tritonclient_health_metadata_and_readiness(server: str) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.is_model_ready("flowers", headers=_headers())
    assert client.is_model_ready("flowers", "1", headers=_headers())
    assert not client.is_model_ready("nobody", headers=_headers())
    assert not client.is_model_ready("flowers", "9", headers=_headers())
    metadata = client.get_model_metadata("flowers", headers=_headers())
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
    assert metadata["parameters"]["labels"] == list(FLOWERS)


def test_tritonclient_infer_with_binary_tensors_matches_predict(server: str) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    reference = _reference(server, "flowers")

    result = client.infer("flowers", [_images_input(binary=True)], headers=_headers())  # defaults
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities, reference, atol=1e-5)
    labels = [label.decode() for label in result.as_numpy("label")]
    assert labels == [FLOWERS[i] for i in reference.argmax(axis=1)]
    assert result.get_response()["model_version"] == "1"

    versioned = client.infer(
        "flowers",
        [_images_input(binary=True)],
        model_version="1",
        headers=_headers(),
        request_compression_algorithm="gzip",
    )
    np.testing.assert_allclose(versioned.as_numpy("probabilities"), reference, atol=1e-5)


def test_tritonclient_json_tensors_and_classification(server: str) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    reference = _reference(server, "flowers")
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=False),
        triton.InferRequestedOutput("label", binary_data=True, class_count=2),
    ]
    result = client.infer(
        "flowers", [_images_input(binary=False)], outputs=outputs, headers=_headers()
    )
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference, atol=1e-5)
    top_two = result.as_numpy("label")
    assert top_two.shape == (3, 2)
    for row, expected in zip(top_two, reference, strict=True):
        value, index, label = row[0].decode().split(":")
        assert int(index) == int(expected.argmax()) and label == FLOWERS[int(index)]
        assert float(value) == pytest.approx(expected.max(), abs=1e-5)


def test_tritonclient_errors_are_exceptions_with_the_reason(server: str) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="not found"):
        client.infer("nobody", [_images_input(binary=True)], headers=_headers())
    broken = triton.InferInput("image", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="not an image"):
        client.infer("flowers", [broken], headers=_headers())
    wrong_type = triton.InferInput("image", [1, 3], "FP32")
    wrong_type.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="must be BYTES"):
        client.infer("flowers", [wrong_type], headers=_headers())


def test_tf_serving_rest_api(server: str) -> None:
    reference = _reference(server, "pets")
    instances = [{"b64": base64.b64encode(photo).decode()} for photo in PHOTOS]

    status = httpx.get(f"{server}/v1/models/pets", headers=HEADERS).json()
    assert status["model_version_status"][0]["version"] == "1"
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert httpx.get(f"{server}/v1/models/pets/versions/1", headers=HEADERS).status_code == 200
    metadata = httpx.get(f"{server}/v1/models/pets/metadata", headers=HEADERS).json()
    assert metadata["model_spec"]["version"] == "1"
    assert metadata["metadata"]["labels"] == ["cats", "dogs"]

    predicted = httpx.post(
        f"{server}/v1/models/pets:predict", json={"instances": instances}, headers=HEADERS
    )
    assert predicted.status_code == 200, predicted.text
    np.testing.assert_allclose(predicted.json()["predictions"], reference, atol=1e-5)
    versioned = httpx.post(
        f"{server}/v1/models/pets/versions/1:predict",
        headers=HEADERS,
        json={"instances": [{"image_bytes": item} for item in instances]},
    )
    np.testing.assert_allclose(versioned.json()["predictions"], reference, atol=1e-5)
    columnar = httpx.post(
        f"{server}/v1/models/pets:predict", json={"inputs": instances}, headers=HEADERS
    )
    np.testing.assert_allclose(columnar.json()["outputs"], reference, atol=1e-5)

    missing = httpx.post(
        f"{server}/v1/models/nobody:predict", json={"instances": instances}, headers=HEADERS
    )
    assert missing.status_code == 404
    assert isinstance(missing.json()["error"], str)
    malformed = httpx.post(
        f"{server}/v1/models/pets:predict", json={"instances": [[1, 2]]}, headers=HEADERS
    )
    assert malformed.status_code == 400
    assert "b64" in malformed.json()["error"]
