"""Which runtime answers predictions (ONNX Runtime for versions with an ONNX export, Keras
otherwise), downloads in every format loaded outside the service, and exporting versions
that were saved without ONNX."""

from __future__ import annotations

import base64
import io
import tarfile
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import api_client, migrate
from tests.models import register_tiny_model
from tests.zips import SHARED

PHOTO = (SHARED / "data" / "cats_vs_dogs_small" / "test" / "dogs" / "dog.4553.jpg").read_bytes()


@pytest.fixture
def client(serving_client):
    return serving_client


def _dog_probability(client, **form: str) -> tuple[float, str]:
    response = client.post("/predict", files={"file": ("dog.jpg", PHOTO)}, data=form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Model-Runtime"] == body["runtime"]
    (prediction,) = body["predictions"]
    return next(x["probability"] for x in prediction["labels"] if x["label"] == "dogs"), body[
        "runtime"
    ]


def _onnx_images_counted(client) -> float:
    """The /metrics counter of images ONNX Runtime classified (process-wide: other tests'
    predictions count too)."""
    prefix = 'smallvision_predict_runtime_images_total{runtime="onnxruntime"} '
    lines = [x for x in client.get("/metrics").text.splitlines() if x.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def _pixels(image_size: int) -> np.ndarray:
    """What the service feeds the model for PHOTO: decoded at the model's scale, resized."""
    from app.ml.data import resize_pixels
    from app.ml.images import decode_image, image_to_array

    decoded = decode_image(PHOTO, max_pixels=10**8, target_size=image_size)
    return resize_pixels(image_to_array(decoded.image), image_size=image_size)[None]


def test_versions_with_an_onnx_export_are_served_by_onnx_runtime(client, tmp_path: Path) -> None:
    import onnxruntime as ort

    register_tiny_model("pets", image_size=128)
    counted = _onnx_images_counted(client)
    probability, runtime = _dog_probability(client)
    assert runtime == "onnxruntime"
    assert _onnx_images_counted(client) == counted + 1

    download = client.get("/models/pets/versions/1/download", params={"format": "onnx"})
    assert download.status_code == 200
    assert 'filename="pets-v1.onnx"' in download.headers["content-disposition"]
    (tmp_path / "pets.onnx").write_bytes(download.content)
    session = ort.InferenceSession(str(tmp_path / "pets.onnx"))
    (sigmoid,) = session.run(None, {"pixels": _pixels(128)})[0][0]
    assert probability == pytest.approx(float(sigmoid), abs=1e-5)


def test_keras_answers_a_version_without_onnx_until_it_is_exported(client, capsys) -> None:
    from app.cli import main
    from app.services.model_versions import model_store, version_ref

    version = register_tiny_model("pets", image_size=128, onnx=False)
    keras_probability, runtime = _dog_probability(client)
    assert runtime == "keras"
    missing = client.get("/models/pets/versions/1/download", params={"format": "onnx"})
    assert missing.status_code == 404
    assert "export-onnx" in missing.json()["detail"]

    assert main(["export-onnx", "--name", "pets"]) == 0
    assert "pets v1: exported" in capsys.readouterr().out
    manifest = model_store().read_manifest("pets/v1")
    assert "model.onnx" in manifest["files"]
    assert manifest["metadata"]["exports"]["onnx"]["max_abs_difference"] <= 1e-4
    ref = version_ref(name="pets", version=1, principal=None)
    assert ref.sha256 != version.sha256  # the new manifest's checksum is the one recorded
    model_store().verified_path(ref.path, expected_sha256=ref.sha256)

    client.app.state.model_cache.refresh()  # the refresh reloads a version whose files changed
    onnx_probability, runtime = _dog_probability(client)
    assert runtime == "onnxruntime"
    assert onnx_probability == pytest.approx(keras_probability, abs=1e-5)

    assert main(["export-onnx", "--name", "pets", "--version", "1"]) == 0
    assert "has an ONNX export already" in capsys.readouterr().out
    assert main(["export-onnx", "--name", "nobody"]) == 1


def test_the_keras_runtime_can_be_forced(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600", SERVING_RUNTIME="keras")
    migrate(sqlite_url)
    register_tiny_model("pets", image_size=128)
    with api_client() as client:
        assert _dog_probability(client)[1] == "keras"


def test_tf_serving_and_open_inference_routes_name_the_runtime(client) -> None:
    register_tiny_model("pets", image_size=64)
    encoded = base64.b64encode(PHOTO).decode()
    v1 = client.post("/v1/models/pets:predict", json={"instances": [{"b64": encoded}]})
    assert v1.status_code == 200, v1.text
    assert v1.headers["X-Model-Runtime"] == "onnxruntime"
    v2 = client.post(
        "/v2/models/pets/infer",
        json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}]},
    )
    assert v2.status_code == 200, v2.text
    assert v2.headers["X-Model-Runtime"] == "onnxruntime"
    assert v2.json()["parameters"] == {"runtime": "onnxruntime"}


def test_saved_model_download_is_tf_serving_layout_and_answers_like_predict(
    client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive is built by a worker when first asked for: 202 until it is ready (here the
    worker's function runs in the test, the API's process never exports), then the file."""
    import tensorflow as tf

    from app.services import exports

    sent: list[str] = []
    monkeypatch.setattr(
        exports.tracking, "send_task", lambda name, *, args, queue: sent.extend(args)
    )
    register_tiny_model("pets", image_size=128, classes=("cats", "dogs", "birds"))
    response = client.post("/predict", files={"file": ("dog.jpg", PHOTO)}, data={"top_k": "3"})
    served = {x["label"]: x["probability"] for x in response.json()["predictions"][0]["labels"]}

    url, savedmodel = "/models/pets/versions/1/download", {"format": "savedmodel"}
    for _ in range(3):  # asked for three times, built once
        pending = client.get(url, params=savedmodel)
        assert pending.status_code == 202, pending.text
        assert pending.headers["Retry-After"] == "5"
        assert pending.json()["status"] == "queued"
    assert len(sent) == 1
    assert [e["status"] for e in client.get("/models/pets/versions/1/exports").json()] == ["queued"]
    exports.run_export(export_id=uuid.UUID(sent[0]), worker_id="a-worker/1")
    (ready,) = client.get("/models/pets/versions/1/exports").json()
    assert ready["status"] == "ready" and ready["size_bytes"] > 0

    download = client.get(url, params=savedmodel)
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/gzip"
    assert "pets-v1-savedmodel.tar.gz" in download.headers["content-disposition"]
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as archive:
            assert "pets/1/saved_model.pb" in archive.getnames()
            archive.extractall(tmp, filter="data")
        serving = tf.saved_model.load(f"{tmp}/pets/1").signatures["serving_default"]
        (output,) = serving(pixels=tf.constant(_pixels(128))).values()
    np.testing.assert_allclose(
        output.numpy()[0], [served["cats"], served["dogs"], served["birds"]], atol=1e-5
    )
    unknown = client.get(url, params={"format": "coreml"})
    assert unknown.status_code == 422 and "tflite_int8" in unknown.text  # names what exists


def test_a_failed_export_says_why_and_can_be_tried_again(
    client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import exports

    sent: list[str] = []
    monkeypatch.setattr(
        exports.tracking, "send_task", lambda name, *, args, queue: sent.extend(args)
    )
    register_tiny_model("pets", image_size=32)

    def broken(*args, **kwargs):
        raise RuntimeError("the converter fell over")

    url, savedmodel = "/models/pets/versions/1/download", {"format": "savedmodel"}
    assert client.get(url, params=savedmodel).status_code == 202
    with monkeypatch.context() as patch:
        patch.setattr(exports.builds, "_saved_model_archive", broken)
        exports.run_export(export_id=uuid.UUID(sent[0]), worker_id="a-worker/1")
    failed = client.get(url, params=savedmodel)
    assert failed.status_code == 409, failed.text
    assert "RuntimeError: the converter fell over" in failed.json()["detail"]
    assert len(sent) == 1  # a failed export is not retried by downloads
    again = client.post("/models/pets/versions/1/exports/savedmodel")
    assert again.status_code == 202 and again.json()["status"] == "queued"
    assert len(sent) == 2
    exports.run_export(export_id=uuid.UUID(sent[1]), worker_id="a-worker/1")
    assert client.get(url, params=savedmodel).status_code == 200
    assert client.post("/models/pets/versions/1/exports/keras").status_code == 422


@pytest.mark.parametrize("module", ["app.main", "worker.tasks"])
def test_the_api_and_the_worker_start_without_importing_keras(module: str) -> None:
    """TensorFlow is imported by the first model loaded with Keras, or the first job: an API
    serving ONNX Runtime never pays for it (hundreds of MB and seconds at start), and a worker's
    job state is seen `running` while it loads. An import of Keras at module level anywhere on
    the way (the NumPy calibration module taking a constant from the Keras layers' module
    once did) fails here."""
    import subprocess
    import sys

    from app.core.config import PROJECT_ROOT

    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout
