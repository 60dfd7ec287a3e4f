"""A version in one format as a zip a developer can use without reading this service's docs:
the model, `labels.json` (order, and thresholds where the version has them),
`preprocessing.json` (what the model expects, exactly) and `predict.py` (load the model,
predict on photos, print each answer as /predict gives it), explained in the zip's
README.md. The bundle of a file is made once and kept in this machine's cache."""

from __future__ import annotations

import hashlib
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

from app.ml.images import KEEP_TIMES_INPUT_SIZE
from app.ml.serving import META_FILE
from app.services import model_versions
from app.services.exports.formats import DownloadFormat, download_name
from app.services.model_versions import VersionRef
from app.services.storage import get_storage
from models_store import file_sha256

# How each format's predict.py gets the model's output for one image (`pixels`: float32
# (height, width, 3), 0..255, upright RGB), as a float32 row.
_FORWARD = {
    "litert": """
from ai_edge_litert.interpreter import Interpreter

interpreter = Interpreter(model_path=str(HERE / MODEL_FILE))


def forward(pixels):
    # The input is (1, height, width, 3) with -1 for both sides: resized to each image.
    given = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(given["index"], [1, *pixels.shape])
    interpreter.allocate_tensors()
    given, answer = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    values = pixels[None]
    if given["dtype"] == np.uint8:  # the full integer model: pixels as they are (scale 1)
        scale, zero_point = given["quantization"]
        values = np.clip(np.round(values / scale + zero_point), 0, 255).astype(np.uint8)
    interpreter.set_tensor(given["index"], values)
    interpreter.invoke()
    row = interpreter.get_tensor(answer["index"])[0].astype(np.float32)
    if answer["dtype"] == np.uint8:
        scale, zero_point = answer["quantization"]
        row = (row - zero_point) * scale
    return row
""",
    "onnxruntime": """
import onnxruntime as ort

session = ort.InferenceSession(str(HERE / MODEL_FILE), providers=["CPUExecutionProvider"])


def forward(pixels):
    # Input "pixels": (batch, height, width, 3) of any size; first output: probabilities.
    return session.run(None, {"pixels": pixels[None]})[0][0]
""",
    "keras": """
import keras

import app.ml.layers  # noqa: F401  (this service's layers: pip install the service's package)

model = keras.saving.load_model(HERE / MODEL_FILE, compile=False)


def forward(pixels):
    return np.asarray(model(pixels[None], training=False))[0]
""",
    "tensorflow": """
import tarfile

import tensorflow as tf

folder = HERE / "savedmodel"
if not folder.is_dir():
    with tarfile.open(HERE / MODEL_FILE) as archive:
        archive.extractall(folder, filter="data")
loaded = tf.saved_model.load(str(next(folder.glob("*/*"))))  # <name>/<version>/
serve = loaded.signatures["serving_default"]


def forward(pixels):
    (output,) = serve(pixels=tf.constant(pixels[None])).values()
    return output.numpy()[0]
""",
}

_RUNTIME_OF = {
    DownloadFormat.KERAS: "keras",
    DownloadFormat.SAVEDMODEL: "tensorflow",
    DownloadFormat.ONNX: "onnxruntime",
    DownloadFormat.ONNX_INT8: "onnxruntime",
    DownloadFormat.TFLITE: "litert",
    DownloadFormat.TFLITE_FP16: "litert",
    DownloadFormat.TFLITE_INT8: "litert",
}
_PACKAGES = {
    "litert": "ai-edge-litert numpy pillow",
    "onnxruntime": "onnxruntime numpy pillow",
    "keras": "tensorflow keras numpy pillow (and this service's package, for its layers)",
    "tensorflow": "tensorflow numpy pillow",
}

_PREDICT_DOC = '''"""{title}

    python predict.py photo.jpg [more.jpg ...]

prints one JSON line per photo: its label (multi-label: the labels over their thresholds)
and every label's probability, as the service's /predict answers them."""
'''

# The photo as the service decodes it (predict.py and the serve-only package's server.py).
DECODE = '''
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
MODEL_FILE = {model_file!r}
LABELS = json.loads((HERE / "labels.json").read_text())
PREPROCESSING = json.loads((HERE / "preprocessing.json").read_text())


def pixels(path):
    """The photo as the service decodes it: upright (EXIF orientation applied), transparency
    on white, RGB, float32 0..255; a side more than {keep} times the model's input size is
    first shrunk by a whole factor (box average). The model resizes the rest itself."""
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    image = image.convert("RGB")
    keep = {keep} * PREPROCESSING["input_size"]
    factors = (max(1, image.width // keep), max(1, image.height // keep))
    if max(factors) > 1:
        image = image.reduce(factors)
    return np.asarray(image, dtype=np.float32)
'''

# The model's output for one image as the service reads it (predict.py and server.py).
ANSWER = """

def probability_row(row):
    # one probability per class, in the order of LABELS["classes"]
    if len(row) == 1 and len(LABELS["classes"]) == 2:  # one sigmoid unit: the second label's
        return np.array([1.0 - row[0], row[0]])
    return row


def answer(row):
    classes = LABELS["classes"]
    row = probability_row(row)
    probabilities = {name: float(p) for name, p in zip(classes, row)}
    if LABELS["task"] == "multilabel":
        thresholds = LABELS["thresholds"]
        chosen = [name for name in classes if probabilities[name] >= thresholds[name]]
        return {"labels": chosen, "probabilities": probabilities}
    return {"label": classes[int(np.argmax(row))], "probabilities": probabilities}
"""

_MAIN = """

if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(json.dumps({"file": path, **answer(forward(pixels(path)))}))
"""


def runtime_of(fmt: DownloadFormat) -> str:
    return _RUNTIME_OF[fmt]


def predict_script(fmt: DownloadFormat, *, model_file: str) -> str:
    """predict.py of a bundle in `fmt` whose model file is `model_file`."""
    runtime = _RUNTIME_OF[fmt]
    title = f"Predict with {model_file} ({fmt.value}, run by {runtime})."
    return (
        _PREDICT_DOC.format(title=title)
        + decode_code(model_file=model_file)
        + _FORWARD[runtime]
        + ANSWER
        + _MAIN
    )


def decode_code(*, model_file: str) -> str:
    """The imports, constants and `pixels(path)` of a bundle's script."""
    return DECODE.format(model_file=model_file, keep=KEEP_TIMES_INPUT_SIZE)


def labels_document(metadata: dict[str, Any]) -> dict[str, Any]:
    classes: list[str] = metadata["classes"]
    document: dict[str, Any] = {"classes": classes, "task": metadata.get("task", "multiclass")}
    thresholds = metadata.get("thresholds")
    if isinstance(thresholds, dict):
        document["thresholds"] = {name: float(thresholds[name]) for name in classes}
    return document


def preprocessing_document(fmt: DownloadFormat, metadata: dict[str, Any]) -> dict[str, Any]:
    """What the model file expects, stated exactly."""
    size = int(metadata["input"]["image_size"])
    uint8 = fmt is DownloadFormat.TFLITE_INT8
    tflite = _RUNTIME_OF[fmt] == "litert"
    return {
        "input_name": "pixels",
        "input_shape": [1, -1, -1, 3] if tflite else [-1, -1, -1, 3],
        "input_dtype": "uint8" if uint8 else "float32",
        "input_quantization": {"scale": 1.0, "zero_point": 0} if uint8 else None,
        "layout": "NHWC",
        "channel_order": "RGB",
        "value_range": [0, 255],
        "exif_orientation": "applied before anything else (the photo made upright)",
        "transparency": "composited on white",
        "input_size": size,
        "shrink_side": KEEP_TIMES_INPUT_SIZE * size,
        "shrink": (
            f"a side longer than shrink_side ({KEEP_TIMES_INPUT_SIZE} x input_size) is first "
            "divided by a whole factor, side // shrink_side, by box averaging "
            "(the service decodes such JPEGs at that scale)"
        ),
        "resize": {
            "to": [size, size],
            "method": "bilinear",
            "half_pixel_centers": True,
            "antialias": False,
            "keeps_aspect_ratio": False,
            "done_by": "the model",
        },
        "normalization": "done by the model (send 0..255)",
        "output": (
            "uint8 probabilities: value = (q - zero_point) * scale, from the output tensor's "
            "quantization"
            if uint8
            else "float32 probabilities"
        ),
        "output_meaning": metadata.get("output", "softmax over classes"),
    }


def _readme(
    fmt: DownloadFormat, ref: VersionRef, model_file: str, check: dict[str, Any] | None
) -> str:
    runtime = _RUNTIME_OF[fmt]
    lines = [
        f"# {ref.name} v{ref.version} ({fmt.value})",
        "",
        f"- `{model_file}`: the model, run by {runtime}",
        "- `labels.json`: the classes in output order, the task, and each label's threshold "
        "(multi-label models)",
        "- `preprocessing.json`: what the model expects (EXIF orientation, input size, value "
        "range, channel order, resize method)",
        "- `predict.py`: load the model and predict on photos, as the service's /predict does",
        "",
        "```sh",
        f"pip install {_PACKAGES[runtime]}",
        "python predict.py photo.jpg",
        "```",
        "",
    ]
    if check is not None:
        lines += [
            "Checked when it was made, by its own runtime on "
            f"{check['images']} held-out ({check['evaluated_on']}) images: accuracy "
            f"{check['accuracy']:.4f}, the float model's {check['float_accuracy']:.4f}; the "
            f"same answer as the float model on {check['agreement']:.2%} of them"
            + (" (DEGRADED: more accuracy lost than allowed)" if check["degraded"] else "")
            + ".",
            "",
        ]
    lines += ["predict.py:", "", "```python", predict_script(fmt, model_file=model_file), "```"]
    return "\n".join(lines) + "\n"


def version_documents(ref: VersionRef) -> dict[str, Any]:
    """What a client running the version's ONNX model itself needs: its labels.json and
    preprocessing.json, as a bundle has them."""
    metadata = json.loads((model_versions.served_folder(ref) / META_FILE).read_text())
    return {
        "labels": labels_document(metadata),
        "preprocessing": preprocessing_document(DownloadFormat.ONNX, metadata),
    }


def bundle_file(
    ref: VersionRef,
    fmt: DownloadFormat,
    *,
    model_path: Path,
    metadata: dict[str, Any],
    check: dict[str, Any] | None,
    model_file: str | None = None,
    labels_txt: bool = False,
) -> Path:
    """The zip of `model_path` in `fmt` (named `model_file` in it; default its download
    name) with its labels (also as labels.txt, a class per line, as Azure Custom Vision's
    exports have them), preprocessing, predict.py and README.md, from this machine's cache
    (made there once per model file and layout)."""
    model_file = model_file or download_name(ref, fmt)
    digest = file_sha256(model_path)
    layout = hashlib.sha256(f"{model_file}|{labels_txt}".encode()).hexdigest()[:12]
    cached = get_storage().cache_dir / "bundles" / f"{digest}-{fmt.value}-{layout}.zip"
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.{uuid.uuid4().hex}")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(model_path, model_file, compress_type=zipfile.ZIP_STORED)
            archive.writestr("labels.json", json.dumps(labels_document(metadata), indent=2))
            if labels_txt:
                archive.writestr("labels.txt", "".join(f"{c}\n" for c in metadata["classes"]))
            archive.writestr(
                "preprocessing.json", json.dumps(preprocessing_document(fmt, metadata), indent=2)
            )
            archive.writestr("predict.py", predict_script(fmt, model_file=model_file))
            archive.writestr("README.md", _readme(fmt, ref, model_file, check))
            if check is not None:
                archive.writestr("check.json", json.dumps(check, indent=2))
        partial.replace(cached)
    finally:
        partial.unlink(missing_ok=True)
    return cached


def bundle(
    ref: VersionRef,
    fmt: DownloadFormat,
    *,
    model_path: Path,
    check: dict[str, Any] | None,
    model_file: str | None = None,
    labels_txt: bool = False,
) -> Path:
    """The bundle of the version's file in `fmt` (bundle_file, with the version's metadata)."""
    metadata = json.loads((model_versions.served_folder(ref) / META_FILE).read_text())
    return bundle_file(
        ref,
        fmt,
        model_path=model_path,
        metadata=metadata,
        check=check,
        model_file=model_file,
        labels_txt=labels_txt,
    )


def bundle_name(ref: VersionRef, fmt: DownloadFormat) -> str:
    return f"{ref.name}-v{ref.version}-{fmt.value}.zip"
