"""The serve-only package (`?format=docker`): a zip with a Dockerfile, the version's ONNX model,
its labels, and server.py, a small HTTP server that answers `POST /predict` as this service
does (the same decoding, probabilities, top_k and "unknown" answer) with ONNX Runtime, NumPy
and Pillow only: no TensorFlow, no database, no broker. For a box that only predicts.

server.py is made of the same decoding and answer code as the bundles' predict.py; the
"unknown" answer's index is scored by a copy of app/ml/outliers.py (plain NumPy), so both
sides compute it with one piece of code."""

from __future__ import annotations

import hashlib
import json
import uuid
import zipfile
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from app.core.config import get_settings
from app.ml import outliers as outliers_module
from app.ml.export import ONNX_FILE
from app.ml.outliers import OUTLIER_FILE
from app.ml.serving import META_FILE
from app.services import model_versions
from app.services.exports.bundles import (
    ANSWER,
    decode_code,
    labels_document,
    preprocessing_document,
)
from app.services.exports.formats import DownloadFormat
from app.services.model_versions import VersionRef
from app.services.storage import get_storage
from models_store import file_sha256

PORT = 8080
# What server.py imports, pinned to the versions this service runs (its answers were checked
# against the service's with them).
PACKAGES = ("onnxruntime", "numpy", "pillow")

_DOC = '''"""{name} v{version}: POST /predict answers as the service that trained it does.

    python server.py [--host 127.0.0.1] [--port {port}]
    curl -F file=@photo.jpg http://127.0.0.1:{port}/predict

Multipart (`file`, or `files` repeated; `top_k`, `detect_unknown`) or the image itself as
the body. GET /health says which model this is. ONNX Runtime, NumPy and Pillow only."""
'''

_SERVER = '''
import argparse
import io
import os
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import onnxruntime as ort

SERVICE = json.loads((HERE / "service.json").read_text())
MAX_BODY_BYTES = int(os.environ.get("MAX_BODY_BYTES", SERVICE["max_body_bytes"]))
MAX_IMAGES = SERVICE["max_images"]
MAX_PIXELS = SERVICE["max_image_pixels"]
MAX_TOP_K = 1000
session = ort.InferenceSession(str(HERE / MODEL_FILE), providers=["CPUExecutionProvider"])
OUTLIERS = None
if (HERE / "outliers.npz").is_file() and len(session.get_outputs()) > 1:
    sys.path.insert(0, str(HERE))
    from outliers import OutlierIndex

    OUTLIERS = OutlierIndex.load(HERE / "outliers.npz", described={})


class RequestError(Exception):
    def __init__(self, status, error, detail):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def images_of(content_type, body):
    """[(filename, bytes)] and the form's other fields, from a multipart body or an image."""
    if not content_type.startswith("multipart/form-data"):
        if content_type.split(";")[0].strip() in {"image/jpeg", "image/png", "image/webp",
                                                   "image/gif", "image/bmp", "image/tiff",
                                                   "application/octet-stream"}:
            return [(None, body)], {}
        raise RequestError(415, "unsupported_media_type",
                           "send multipart/form-data (file) or the image as the body")
    head = f"Content-Type: {content_type}\\r\\n\\r\\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    images, fields = [], {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name in ("file", "files"):
            images.append((part.get_filename(), part.get_payload(decode=True) or b""))
        elif name:
            fields[name] = (part.get_payload(decode=True) or b"").decode()
        if len(images) > MAX_IMAGES:
            raise RequestError(413, "payload_too_large", f"at most {MAX_IMAGES} images")
    if not images:
        raise RequestError(400, "bad_request", "no image: send it as the form field file")
    return images, fields


def decoded(data, filename):
    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.width * probe.height > MAX_PIXELS:
                raise RequestError(413, "payload_too_large",
                                   f"{filename or 'the image'} has more than {MAX_PIXELS} pixels")
        return pixels(io.BytesIO(data))
    except RequestError:
        raise
    except Exception as exc:
        raise RequestError(400, "bad_request", f"{filename or 'the image'} is not an image "
                           f"this server can read: {exc}") from exc


def labels_of(row, top_k):
    classes = LABELS["classes"]
    order = sorted(range(len(classes)), key=lambda i: -row[i])
    if LABELS["task"] != "multilabel":
        listed = [{"label": classes[i], "probability": float(row[i])} for i in order[:top_k]]
        return {"labels": listed}
    thresholds = LABELS["thresholds"]
    listed = [
        {
            "label": classes[i],
            "probability": float(row[i]),
            "threshold": float(thresholds[classes[i]]),
            "above_threshold": bool(row[i] >= thresholds[classes[i]]),
        }
        for i in order
    ]
    passed = [entry["label"] for entry in listed if entry["above_threshold"]]
    return {"labels": listed, "labels_above_threshold": passed}


def predict(images, fields):
    started = time.perf_counter()
    try:
        top_k = int(fields.get("top_k", 5))
    except ValueError:
        raise RequestError(422, "validation_error", "top_k must be a whole number") from None
    if not 1 <= top_k <= MAX_TOP_K:
        raise RequestError(422, "validation_error", f"top_k must be 1 to {MAX_TOP_K}")
    detect_unknown = fields.get("detect_unknown", "true").lower() not in {"false", "0", "no"}
    answers = []
    for filename, data in images:
        outputs = session.run(None, {"pixels": decoded(data, filename)[None]})
        row = probability_row(outputs[0][0].astype(np.float64))
        score = None
        if OUTLIERS is not None and detect_unknown:
            score = float(OUTLIERS.scores(outputs[1])[0])
        answers.append(
            {
                "filename": filename,
                **labels_of(row, top_k),
                "unknown": score is not None and score > OUTLIERS.threshold,
                "outlier_score": None if score is None else round(score, 6),
                "explanation": None,
            }
        )
    unknown_on = OUTLIERS is not None and detect_unknown
    return {
        "model": SERVICE["model"],
        "version": SERVICE["version"],
        **({"task": "multilabel"} if LABELS["task"] == "multilabel" else {}),
        "predictions": answers,
        "outlier_threshold": OUTLIERS.threshold if unknown_on else None,
        "seconds": round(time.perf_counter() - started, 6),
        "runtime": "onnxruntime",
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "smallvision-serve"

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Model-Runtime", "onnxruntime")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != "/health":
            return self._send(404, {"error": "not_found", "detail": "GET /health, POST /predict"})
        return self._send(200, {"status": "ok", "model": SERVICE["model"],
                                "version": SERVICE["version"], "classes": LABELS["classes"]})

    def do_POST(self):
        try:
            if self.path.split("?")[0] != "/predict":
                raise RequestError(404, "not_found", "POST /predict")
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise RequestError(411, "length_required", "send Content-Length")
            if int(length) > MAX_BODY_BYTES:
                raise RequestError(413, "payload_too_large",
                                   f"the body is over {MAX_BODY_BYTES} bytes")
            body = self.rfile.read(int(length))
            images, fields = images_of(self.headers.get("Content-Type", ""), body)
            self._send(200, predict(images, fields))
        except RequestError as exc:
            self.close_connection = True
            self._send(exc.status, {"error": exc.error, "detail": exc.detail})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default={port})
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"serving {SERVICE['model']} v{SERVICE['version']} on {args.host}:{args.port}",
          flush=True)
    server.serve_forever()
'''

_DOCKERFILE = """FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
USER nobody
EXPOSE {port}
CMD ["python", "server.py", "--host", "0.0.0.0", "--port", "{port}"]
"""


def server_script(ref: VersionRef) -> str:
    """server.py of the version's package."""
    return (
        _DOC.format(name=ref.name, version=ref.version, port=PORT)
        + decode_code(model_file=ONNX_FILE)
        + ANSWER
        + _SERVER.replace("{port}", str(PORT))
    )


def requirements() -> str:
    return "".join(f"{name}=={package_metadata.version(name)}\n" for name in PACKAGES)


def _readme(ref: VersionRef, unknown: bool) -> str:
    tag = f"{ref.name.lower()}-v{ref.version}".replace("_", "-")
    return "\n".join(
        [
            f"# {ref.name} v{ref.version}, serve-only",
            "",
            "`POST /predict` as the service that trained this model answers it (the same",
            "decoding, probabilities and top_k"
            + (', and the "unknown" answer' if unknown else "")
            + "), from `model.onnx`, with ONNX Runtime, NumPy and Pillow only.",
            "",
            "```sh",
            f"docker build -t {tag} . && docker run -p {PORT}:{PORT} {tag}",
            f"curl -F file=@photo.jpg http://127.0.0.1:{PORT}/predict",
            "```",
            "",
            "Without Docker: `pip install -r requirements.txt && python server.py`.",
            "",
            "- `model.onnx`: the model (raw RGB pixels 0..255 of any size; resized inside)",
            "- `labels.json`, `preprocessing.json`: its classes and what it expects",
            "- `service.json`: its name and version, and the limits server.py applies",
            *(
                [
                    "- `outliers.npz`, `outliers.py`: the index of its training images that the",
                    '  "unknown" answer is scored on',
                ]
                if unknown
                else []
            ),
            "",
        ]
    )


def serve_package(ref: VersionRef) -> Path:
    """The version's serve-only zip, from this machine's cache (made there once per model
    file and server code)."""
    folder = model_versions.served_folder(ref)
    meta: dict[str, Any] = json.loads((folder / META_FILE).read_text())
    model_path = folder / ONNX_FILE
    if not model_path.is_file():
        from app.services.exports.onnx import version_file

        model_path = version_file(ref, DownloadFormat.ONNX)  # NotFoundError saying how to add it
    index = folder / OUTLIER_FILE
    unknown = isinstance(meta.get("outliers"), dict) and index.is_file()
    script = server_script(ref)
    key = hashlib.sha256(
        f"{file_sha256(model_path)}|{ref.name}|{ref.version}|{unknown}|{script}".encode()
    ).hexdigest()[:24]
    cached = get_storage().cache_dir / "serve-packages" / f"{key}.zip"
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    settings = get_settings()
    service = {
        "model": ref.name,
        "version": ref.version,
        "max_body_bytes": settings.max_image_file_bytes,
        "max_images": settings.max_predict_images,
        "max_image_pixels": settings.max_image_pixels,
    }
    partial = cached.with_name(f".{cached.name}.{uuid.uuid4().hex}")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(model_path, ONNX_FILE, compress_type=zipfile.ZIP_STORED)
            archive.writestr("labels.json", json.dumps(labels_document(meta), indent=2))
            archive.writestr(
                "preprocessing.json",
                json.dumps(preprocessing_document(DownloadFormat.ONNX, meta), indent=2),
            )
            archive.writestr("service.json", json.dumps(service, indent=2))
            archive.writestr("server.py", script)
            archive.writestr("requirements.txt", requirements())
            archive.writestr("Dockerfile", _DOCKERFILE.format(port=PORT))
            archive.writestr("README.md", _readme(ref, unknown))
            if unknown:
                archive.write(index, OUTLIER_FILE)
                archive.write(Path(outliers_module.__file__), "outliers.py")
        partial.replace(cached)
    finally:
        partial.unlink(missing_ok=True)
    return cached
