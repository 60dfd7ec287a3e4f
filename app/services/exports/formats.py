"""The formats a version downloads as, and the name each file is saved as."""

from __future__ import annotations

import enum

from app.ml.edge import EDGE_FILES, EdgeFormat
from app.services.model_versions import VersionRef


class DownloadFormat(enum.StrEnum):
    KERAS = "keras"  # the `.keras` file: keras.saving.load_model
    ONNX = "onnx"  # model.onnx: onnxruntime.InferenceSession
    SAVEDMODEL = "savedmodel"  # a .tar.gz in TF Serving's <name>/<version>/ layout
    TFLITE = EdgeFormat.TFLITE.value  # LiteRT (TensorFlow Lite), float32
    TFLITE_FP16 = EdgeFormat.TFLITE_FP16.value  # float16 weights
    TFLITE_INT8 = EdgeFormat.TFLITE_INT8.value  # full integer, uint8 in and out
    ONNX_INT8 = EdgeFormat.ONNX_INT8.value  # static QDQ int8
    DOCKER = "docker"  # a zip: Dockerfile, model.onnx and a server without TensorFlow


# Formats for devices: made by a worker after training, each checked on held-out images.
EDGE_FORMATS = frozenset(DownloadFormat(f.value) for f in EdgeFormat)
# Formats built by a worker (the others are files of the version itself).
BUILT_ON_DEMAND = frozenset({DownloadFormat.SAVEDMODEL}) | EDGE_FORMATS


def edge_format(fmt: DownloadFormat) -> EdgeFormat:
    return EdgeFormat(fmt.value)


def download_name(ref: VersionRef, fmt: DownloadFormat) -> str:
    """The file name a client should save the version in `fmt` as."""
    stem = f"{ref.name}-v{ref.version}"
    if fmt in EDGE_FORMATS:
        suffix = EDGE_FILES[edge_format(fmt)].removeprefix("model")
        return f"{stem}{suffix}"
    return {
        DownloadFormat.KERAS: f"{stem}.keras",
        DownloadFormat.ONNX: f"{stem}.onnx",
        DownloadFormat.SAVEDMODEL: f"{stem}-savedmodel.tar.gz",
        DownloadFormat.DOCKER: f"{stem}-docker.zip",
    }[fmt]


def media_type(fmt: DownloadFormat) -> str:
    if fmt is DownloadFormat.DOCKER:
        return "application/zip"
    return "application/gzip" if fmt is DownloadFormat.SAVEDMODEL else "application/octet-stream"
