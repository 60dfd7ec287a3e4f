"""Exports for devices: TensorFlow Lite (float32, float16 weights, full integer) and ONNX
with int8 weights and activations, each checked by its own runtime.

Every one takes what the other exports take: raw RGB pixels, 0..255, of any height and width,
with resizing and preprocessing inside. A TFLite model's input is (1, height, width, 3) with
-1 for both sides: the interpreter is resized to each image (`resize_tensor_input`). The full
integer model takes and gives uint8: its input's quantization is scale 1, zero point 0 (the
pixels as they are), its output's the probabilities' (value = (q - zero_point) * scale).

Quantized models fail silently (a converter that scores 43 % top-1, an int8 model "totally
unusable"), so `measure` runs each export on held-out images with its own runtime (LiteRT's
interpreter, ONNX Runtime) beside the float model; the caller keeps the figures with the
export and refuses a degraded one.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.ml.config import Task
from app.ml.evaluate import class_probabilities
from app.ml.export import INPUT_NAME, onnx_session

logger = logging.getLogger(__name__)


class EdgeFormat(enum.StrEnum):
    TFLITE = "tflite"  # float32
    TFLITE_FP16 = "tflite_fp16"  # float16 weights, float32 in and out
    TFLITE_INT8 = "tflite_int8"  # full integer: int8 inside, uint8 in and out
    ONNX_INT8 = "onnx_int8"  # static QDQ, int8 weights per channel, uint8 activations


EDGE_FILES = {
    EdgeFormat.TFLITE: "model.tflite",
    EdgeFormat.TFLITE_FP16: "model_fp16.tflite",
    EdgeFormat.TFLITE_INT8: "model_int8.tflite",
    EdgeFormat.ONNX_INT8: "model_int8.onnx",
}
RUNTIMES = {
    EdgeFormat.TFLITE: "litert",
    EdgeFormat.TFLITE_FP16: "litert",
    EdgeFormat.TFLITE_INT8: "litert",
    EdgeFormat.ONNX_INT8: "onnxruntime",
}
# Training images the integer formats calibrate their activation ranges on.
MAX_CALIBRATION_IMAGES = 300


class EdgeExportError(RuntimeError):
    """The converter or the quantizer failed, or the runtime cannot run the result."""


def _frozen_function(model: Any) -> Any:
    """The model as a concrete function of (1, height, width, 3) float32 pixels, every
    variable a constant. (A SavedModel of the model converts to variables TFLite reads at run
    time, which the interpreter then finds empty; `from_keras_model` fails under Keras 3.)"""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    signature = [tf.TensorSpec([1, None, None, 3], tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]
    def serve(pixels: Any) -> Any:
        return model(pixels, training=False)

    return convert_variables_to_constants_v2(serve.get_concrete_function())


def tflite_bytes(
    model: Any, fmt: EdgeFormat, *, calibration: Callable[[], Iterable[np.ndarray]] | None = None
) -> bytes:
    """The model as a TFLite flatbuffer in `fmt` (one of the tflite formats). The full
    integer one needs `calibration`: a function giving (height, width, 3) pixel arrays."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([_frozen_function(model)])
    if fmt is EdgeFormat.TFLITE_FP16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt is EdgeFormat.TFLITE_INT8:
        if calibration is None:
            raise ValueError("a full integer model needs calibration images")
        images = calibration

        def representative() -> Iterator[list[np.ndarray]]:
            for pixels in images():
                yield [pixels[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    elif fmt is not EdgeFormat.TFLITE:
        raise ValueError(f"{fmt} is not a TFLite format")
    try:
        return bytes(converter.convert())
    except Exception as exc:  # the converter raises whatever MLIR reports
        raise EdgeExportError(f"the TFLite converter failed ({fmt}): {exc}") from exc


class _Calibration:
    """ONNX Runtime's calibration reader over pixel arrays (one image per batch: the images
    have their own sizes, and the model takes any)."""

    def __init__(self, images: Iterable[np.ndarray]) -> None:
        self._images = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        pixels = next(self._images, None)
        return None if pixels is None else {INPUT_NAME: pixels[None].astype(np.float32)}


def onnx_int8(float_model: Path, target: Path, *, calibration: Iterable[np.ndarray]) -> None:
    """Static QDQ quantization of a float ONNX export: shape inference and graph clean-up
    first (`quant_pre_process`), then int8 weights per output channel and uint8 activations
    whose ranges come from `calibration`. (Dynamic quantization makes ConvInteger nodes,
    which ONNX Runtime's CPU provider does not run.)"""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calibration, CalibrationDataReader):  # type: ignore[misc]
        pass

    prepared = target.with_name(f".{target.name}.prepared")
    try:
        quant_pre_process(str(float_model), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    except Exception as exc:
        target.unlink(missing_ok=True)
        raise EdgeExportError(f"ONNX Runtime's quantizer failed: {exc}") from exc
    finally:
        prepared.unlink(missing_ok=True)


class EdgeModel(Protocol):
    def forward(self, pixels: np.ndarray) -> np.ndarray:
        """One image, (height, width, 3) float32 0..255 -> the model's output row."""
        ...


class LiteRtModel:
    """A TFLite model run by LiteRT's interpreter (ai-edge-litert), resized to each image's
    size; uint8 input and output are quantized and read back with their own parameters."""

    def __init__(self, model: bytes | Path, *, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        content = model.read_bytes() if isinstance(model, Path) else model
        self._interpreter = Interpreter(model_content=content, num_threads=threads)
        self._shape: tuple[int, ...] | None = None

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        interpreter = self._interpreter
        shape = (1, *pixels.shape)
        if shape != self._shape:
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, list(shape))
            interpreter.allocate_tensors()
            self._shape = shape
        given, answer = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        values = pixels[None].astype(np.float32)
        if given["dtype"] == np.uint8:
            scale, zero_point = given["quantization"]
            values = np.clip(np.round(values / scale + zero_point), 0, 255).astype(np.uint8)
        interpreter.set_tensor(given["index"], values)
        interpreter.invoke()
        output: np.ndarray = np.asarray(interpreter.get_tensor(answer["index"]))[0]
        row = output.astype(np.float32)
        if answer["dtype"] == np.uint8:
            scale, zero_point = answer["quantization"]
            row = (row - np.float32(zero_point)) * np.float32(scale)
        return row


class OnnxModel:
    """An ONNX export run by ONNX Runtime (its first output: the probabilities)."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self._session = onnx_session(path, threads=threads)

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        outputs = self._session.run(None, {INPUT_NAME: pixels[None].astype(np.float32)})
        row: np.ndarray = np.asarray(outputs[0], dtype=np.float32)[0]
        return row


def edge_model(fmt: EdgeFormat, path: Path) -> EdgeModel:
    if RUNTIMES[fmt] == "litert":
        return LiteRtModel(path)
    return OnnxModel(path)


class KerasModel:
    """The float model itself, for a version without an ONNX export to compare with."""

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        self._serve = tf.function(
            lambda pixels: model(pixels, training=False),
            input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)],
            reduce_retracing=True,
        )

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        row: np.ndarray = np.asarray(self._serve(pixels[None].astype(np.float32)), np.float32)[0]
        return row


# At most this many held-out images check an export (evenly spread over the split).
MAX_CHECK_IMAGES = 2000


@dataclass(frozen=True)
class HeldOutImages:
    """The images an export is checked on, decoded as /predict decodes them (one at a time,
    when read: a test split of thousands of photos is never in memory at once), with their
    truth: class indices, or rows of 0/1 per label with the labels' `thresholds`."""

    images: Callable[[], Iterable[np.ndarray]]
    truth: np.ndarray
    classes: list[str]
    task: Task
    split: str
    thresholds: np.ndarray | None = None


def _decisions(probabilities: np.ndarray, held_out: HeldOutImages) -> np.ndarray:
    """Each image's answer: its top class, or (multi-label) its set of labels over their
    thresholds, as a row of booleans."""
    decided: np.ndarray
    if held_out.task is Task.MULTILABEL:
        assert held_out.thresholds is not None
        decided = probabilities >= held_out.thresholds
    else:
        decided = probabilities.argmax(axis=1)
    return decided


def _accuracy(decisions: np.ndarray, held_out: HeldOutImages) -> float:
    if not len(decisions):
        return 0.0
    if held_out.task is Task.MULTILABEL:
        return float(np.mean(np.all(decisions == (held_out.truth > 0), axis=1)))
    return float(np.mean(decisions == held_out.truth))


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    if not len(a):
        return 0.0
    same = np.all(a == b, axis=1) if a.ndim == 2 else a == b
    return float(np.mean(same))


@dataclass(frozen=True)
class EdgeReport:
    """An export's check: its accuracy and the float model's on the same images (exact match
    of the label sets, for multi-label), how often its answer is the float model's, the
    largest probability difference, and whether the loss is over `max_loss_points`."""

    format: EdgeFormat
    split: str
    images: int
    accuracy: float
    float_accuracy: float
    agreement: float
    max_probability_difference: float
    max_loss_points: float
    size_bytes: int
    seconds: float

    @property
    def degraded(self) -> bool:
        return (self.float_accuracy - self.accuracy) * 100 > self.max_loss_points

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.format.value,
            "runtime": RUNTIMES[self.format],
            "evaluated_on": self.split,
            "images": self.images,
            "accuracy": round(self.accuracy, 6),
            "float_accuracy": round(self.float_accuracy, 6),
            "accuracy_loss_points": round((self.float_accuracy - self.accuracy) * 100, 3),
            "agreement": round(self.agreement, 6),
            "max_probability_difference": round(self.max_probability_difference, 6),
            "max_loss_points": self.max_loss_points,
            "degraded": self.degraded,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 3),
        }


def measure(
    fmt: EdgeFormat,
    path: Path,
    *,
    held_out: HeldOutImages,
    reference: EdgeModel,
    max_loss_points: float,
    seconds: float,
) -> EdgeReport:
    """Run the export at `path` with its own runtime on the held-out images, beside the
    float model (`reference`), and compare their answers."""
    started = time.perf_counter()
    export = edge_model(fmt, path)
    count = len(held_out.classes)
    ours, theirs = [np.zeros((0, count))], [np.zeros((0, count))]
    for pixels in held_out.images():
        ours.append(class_probabilities(export.forward(pixels)[None], count))
        theirs.append(class_probabilities(reference.forward(pixels)[None], count))
    mine, floats = np.concatenate(ours), np.concatenate(theirs)
    if len(mine) != len(held_out.truth):
        raise EdgeExportError(f"{len(mine)} images were read, {len(held_out.truth)} expected")
    logger.info("checked %s on %d images in %.1f s", fmt, len(mine), time.perf_counter() - started)
    decided, float_decided = _decisions(mine, held_out), _decisions(floats, held_out)
    return EdgeReport(
        format=fmt,
        split=held_out.split,
        images=len(mine),
        accuracy=_accuracy(decided, held_out),
        float_accuracy=_accuracy(float_decided, held_out),
        agreement=_agreement(decided, float_decided),
        max_probability_difference=float(np.max(np.abs(mine - floats))) if len(mine) else 0.0,
        max_loss_points=max_loss_points,
        size_bytes=path.stat().st_size,
        seconds=seconds,
    )


def build(
    fmt: EdgeFormat,
    target: Path,
    *,
    model: Callable[[], Any],
    float_onnx: Path | None,
    calibration: Callable[[], Iterable[np.ndarray]],
) -> float:
    """Write the export in `fmt` to `target`; its conversion time in seconds. `model` loads
    the Keras model (the TFLite formats need it); `onnx_int8` quantizes the float ONNX
    export at `float_onnx`."""
    started = time.perf_counter()
    if fmt is EdgeFormat.ONNX_INT8:
        if float_onnx is None or not float_onnx.is_file():
            raise EdgeExportError("onnx_int8 is made from the version's ONNX export: it has none")
        onnx_int8(float_onnx, target, calibration=calibration())
    else:
        target.write_bytes(tflite_bytes(model(), fmt, calibration=calibration))
    return time.perf_counter() - started
