"""Serving a version from its int8 ONNX export: per request (`precision=int8`) or as the
version's default (PUT .../serving), only once a worker built that export and its accuracy
check passed; the answer names the runtime that gave it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.db.session import session_scope
from app.services import exports
from app.services.exports import DownloadFormat
from app.services.model_versions import VersionRef
from tests.conftest import auth_headers, migrate
from tests.models import register_tiny_model
from tests.zips import PHOTOS, tiny_photo_zip

PHOTO = (PHOTOS / "test" / "dogs" / "dog.4553.jpg").read_bytes()


@pytest.fixture
def client(configure, sqlite_url: str, tmp_path: Path):
    # a loss of up to 100 points passes: the tiny model's int8 export is served
    configure(database_url=sqlite_url, EDGE_EXPORT_MAX_LOSS_POINTS="100")
    migrate(sqlite_url)
    from app.main import create_app

    with TestClient(create_app(), headers=auth_headers("admin")) as client:
        yield client


def _dataset(client: TestClient, tmp_path: Path) -> str:
    archive = tiny_photo_zip(tmp_path / "pets.zip")
    with archive.open("rb") as handle:
        created = client.post("/datasets", files={"file": handle}, data={"name": "pets"})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _predict(client: TestClient, **fields: str):
    return client.post(
        "/predict", files={"file": ("dog.jpg", PHOTO)}, data={"model": "pets", **fields}
    )


def _probabilities(answer) -> dict[str, float]:
    return {x["label"]: x["probability"] for x in answer.json()["predictions"][0]["labels"]}


def test_int8_answers_only_once_its_export_passed_its_check(client, tmp_path: Path) -> None:
    row = register_tiny_model("pets", dataset_id=_dataset(client, tmp_path), owner="admin")
    with session_scope() as session:
        ref = VersionRef.of(session.merge(row))
    serving = "/models/pets/versions/1/serving"

    refused = _predict(client, precision="int8")
    assert refused.status_code == 409, refused.text
    assert "exports/onnx_int8" in refused.json()["detail"]  # says how to build it
    assert client.put(serving, json={"precision": "int8"}).status_code == 409
    assert _predict(client, precision="int4").status_code == 422

    built, _ = exports.build_now(ref, DownloadFormat.ONNX_INT8, worker_id="test")
    assert built.status == "ready" and not built.report["degraded"], built.error
    float_answer = _predict(client)
    assert float_answer.json()["runtime"] == "onnxruntime"
    int8_answer = _predict(client, precision="int8")
    assert int8_answer.status_code == 200, int8_answer.text
    assert int8_answer.json()["runtime"] == "onnxruntime_int8"
    assert int8_answer.headers["X-Model-Runtime"] == "onnxruntime_int8"
    for label, probability in _probabilities(float_answer).items():
        assert abs(_probabilities(int8_answer)[label] - probability) < 0.15

    # the version's default: int8 until it is set back; a request may still ask for float32
    switched = client.put(serving, json={"precision": "int8"})
    assert switched.status_code == 200 and switched.json()["serving_precision"] == "int8"
    assert client.get("/models/pets/versions/1").json()["serving_precision"] == "int8"
    assert _predict(client).json()["runtime"] == "onnxruntime_int8"
    assert _predict(client, precision="float32").json()["runtime"] == "onnxruntime"
    json_answer = client.post(
        "/predict/json",
        json={"model": "pets", "images": [{"b64": base64.b64encode(PHOTO).decode()}]},
    )
    assert json_answer.json()["runtime"] == "onnxruntime_int8"
    client.put(serving, json={"precision": "float32"})
    assert _predict(client).json()["runtime"] == "onnxruntime"


def test_a_degraded_int8_export_is_never_served(
    client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = register_tiny_model("pets", dataset_id=_dataset(client, tmp_path), owner="admin")
    with session_scope() as session:
        ref = VersionRef.of(session.merge(row))
    # no loss is still more than -1 point: the check marks it degraded
    monkeypatch.setenv("SMALLVISION_EDGE_EXPORT_MAX_LOSS_POINTS", "-1")
    from app.core.config import get_settings

    get_settings.cache_clear()
    built, _ = exports.build_now(ref, DownloadFormat.ONNX_INT8, worker_id="test")
    assert built.report["degraded"]
    refused = _predict(client, precision="int8")
    assert refused.status_code == 409 and "degraded" in refused.json()["detail"]
    assert "agreement" in refused.json()["detail"]  # with the figures
    put = client.put("/models/pets/versions/1/serving", json={"precision": "int8"})
    assert put.status_code == 409 and "degraded" in put.json()["detail"]
