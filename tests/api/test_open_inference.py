"""Malformed Open Inference Protocol and TF Serving requests: a 4xx with the reason, never 5xx."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from app.services.open_inference import parse_bytes_tensor, serialize_bytes_tensor
from tests.conftest import api_client, migrate
from tests.models import register_tiny_model
from tests.zips import image_bytes


@pytest.fixture
def client(configure, sqlite_url: str):
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600")
    migrate(sqlite_url)
    register_tiny_model("pets")
    with api_client() as test_client:
        yield test_client


def test_bytes_tensor_round_trip_and_truncation() -> None:
    elements = [b"", b"a", image_bytes()]
    assert parse_bytes_tensor(serialize_bytes_tensor(elements)) == elements
    with pytest.raises(Exception, match="length prefix"):
        parse_bytes_tensor(b"\x01\x00")
    with pytest.raises(Exception, match="shorter than declared"):
        parse_bytes_tensor(struct.pack("<I", 10) + b"abc")


def _binary(header: dict, payload: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    return encoded + payload, {"Inference-Header-Content-Length": str(len(encoded))}


def _image_input(count: int = 1, **extra) -> dict:
    return {"name": "image", "shape": [count], "datatype": "BYTES", **extra}


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"not json", {}, "not valid JSON"),
        (b"{}", {}, "inputs"),
        (json.dumps({"inputs": []}).encode(), {}, "inputs"),
        (json.dumps({"inputs": [_image_input(), _image_input()]}).encode(), {}, "exactly one"),
        (json.dumps({"inputs": [_image_input(data=["!!"])]}).encode(), {}, "base64"),
        (json.dumps({"inputs": [_image_input(data=[1])]}).encode(), {}, "base64 strings"),
        (json.dumps({"inputs": [_image_input(2, data=["aGk="])]}).encode(), {}, "says 2 images"),
        (json.dumps({"inputs": [{**_image_input(), "shape": [1, 2]}]}).encode(), {}, "[N, 1]"),
        (json.dumps({"inputs": [{**_image_input(), "shape": [0]}]}).encode(), {}, "shape"),
        (
            json.dumps(
                {"inputs": [_image_input(data=["aGk="])], "outputs": [{"name": "x"}]}
            ).encode(),
            {},
            "unknown output",
        ),
        (
            *_binary({"inputs": [_image_input(parameters={"binary_data_size": 99})]}, b"abc"),
            "binary_data_size",
        ),
        (
            *_binary({"inputs": [_image_input(parameters={"binary_data_size": 3})]}, b"abc"),
            "truncated",
        ),
        (*_binary({"inputs": [_image_input()]}, b"abc"), "no input declares"),
        (b"{}", {"Inference-Header-Content-Length": "999"}, "does not fit"),
        (b"{}", {"Inference-Header-Content-Length": "-1"}, "does not fit"),
    ],
)
def test_malformed_infer_requests_are_400(client, body, headers, reason) -> None:
    response = client.post("/v2/models/pets/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]


def test_infer_limits_and_encodings(client, configure) -> None:
    photo = base64.b64encode(image_bytes()).decode()
    request = {"inputs": [_image_input(data=[photo])]}
    ok = client.post("/v2/models/pets/infer", json=request)
    assert ok.status_code == 200, ok.text
    assert [o["name"] for o in ok.json()["outputs"]] == ["probabilities", "label"]
    assert ok.json()["outputs"][0]["shape"] == [1, 2]

    brotli = client.post(
        "/v2/models/pets/infer", content=json.dumps(request), headers={"Content-Encoding": "br"}
    )
    assert brotli.status_code == 415
    bad_gzip = client.post(
        "/v2/models/pets/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"}
    )
    assert bad_gzip.status_code == 400
    too_many = {"inputs": [_image_input(65, data=[photo] * 65)]}
    assert client.post("/v2/models/pets/infer", json=too_many).status_code == 413
    assert client.post("/v2/models/nobody/infer", json=request).status_code == 404
    assert client.get("/v2/models/nobody").status_code == 404
    assert client.get("/v2/models/pets/versions/5/ready").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"instances": [], "inputs": []},
        {"instances": []},
        {"instances": "x"},
        {"instances": [{"b64": 5}]},
        {"instances": [{"b64": "aGk=", "other": 1}]},
        {"inputs": {"a": [], "b": []}},
    ],
)
def test_malformed_tf_serving_requests_are_400(client, body) -> None:
    response = client.post("/v1/models/pets:predict", json=body)
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["error"], str)


def test_tf_serving_non_image_is_415(client) -> None:
    instances = [{"b64": base64.b64encode(b"plain text").decode()}]
    response = client.post("/v1/models/pets:predict", json={"instances": instances})
    assert response.status_code == 415
    assert "not an image" in response.json()["error"]
