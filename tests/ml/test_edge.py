"""The formats for devices answer like the Keras model when run by their own runtime (LiteRT,
ONNX Runtime) on real photos of several sizes, take the same raw pixels, and are checked by
`measure` against the float model."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import keras
import numpy as np
import pytest

from app.core.config import EdgeExportName
from app.ml import edge, export
from app.ml.config import HeadKind, Task
from app.ml.edge import EdgeFormat, KerasModel, LiteRtModel, OnnxModel
from tests.ml.test_export import _photos, _pretrained, _scratch

FLOAT_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2
# Quantized answers: within this of the float probabilities on every photo.
INT8_TOLERANCE = 0.15


def _keras_rows(model: keras.Model, photos: list[np.ndarray]) -> np.ndarray:
    reference = KerasModel(model)
    return np.stack([reference.forward(p) for p in photos])


def test_the_settings_name_every_format() -> None:
    assert set(get_args(EdgeExportName)) == {f.value for f in EdgeFormat}


@pytest.mark.parametrize("kind", ["scratch-sigmoid", "scratch-softmax", "mobilenet-linear"])
def test_tflite_float_and_fp16_answer_like_keras_on_photos_of_any_size(kind: str) -> None:
    model = {
        "scratch-sigmoid": lambda: _scratch(2),
        "scratch-softmax": lambda: _scratch(3),
        "mobilenet-linear": lambda: _pretrained("mobilenet", 3, 64, HeadKind.LINEAR),
    }[kind]()
    photos = _photos()
    expected = _keras_rows(model, photos)
    for fmt, tolerance in (
        (EdgeFormat.TFLITE, FLOAT_TOLERANCE),
        (EdgeFormat.TFLITE_FP16, FP16_TOLERANCE),
    ):
        runner = LiteRtModel(edge.tflite_bytes(model, fmt))
        answered = np.stack([runner.forward(p) for p in photos])
        assert answered.shape == expected.shape
        assert np.max(np.abs(answered - expected)) <= tolerance, fmt


def test_the_full_integer_model_takes_uint8_pixels_as_they_are(tmp_path: Path) -> None:
    model = _pretrained("mobilenet", 3, 64, HeadKind.LINEAR)
    photos = _photos()
    content = edge.tflite_bytes(model, EdgeFormat.TFLITE_INT8, calibration=lambda: photos)
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(content)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    given, answer = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert given["dtype"] == np.uint8 and answer["dtype"] == np.uint8
    assert list(given["shape_signature"]) == [1, -1, -1, 3]
    scale, zero_point = given["quantization"]
    assert abs(scale - 1.0) < 1e-6 and zero_point == 0  # raw 0..255 pixels
    runner = LiteRtModel(path)
    answered = np.stack([runner.forward(p) for p in photos])
    expected = _keras_rows(model, photos)
    assert np.max(np.abs(answered - expected)) <= INT8_TOLERANCE
    assert np.allclose(answered.sum(axis=1), 1.0, atol=0.05)


def test_onnx_int8_is_static_qdq_and_answers_near_the_float_export(tmp_path: Path) -> None:
    import onnx

    model = _pretrained("mobilenet", 3, 64, HeadKind.LINEAR)
    photos = _photos()
    float_path = tmp_path / "model.onnx"
    export.export_onnx(model, float_path, image_size=64)
    int8_path = tmp_path / "model_int8.onnx"
    edge.onnx_int8(float_path, int8_path, calibration=photos)
    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "ConvInteger" not in ops
    quantized, reference = OnnxModel(int8_path), OnnxModel(float_path)
    for pixels in photos:
        assert np.max(np.abs(quantized.forward(pixels) - reference.forward(pixels))) <= (
            INT8_TOLERANCE
        )
    assert not list(tmp_path.glob(".*prepared"))


def _held_out(photos: list[np.ndarray], truth: np.ndarray, task: Task = Task.MULTICLASS):
    return edge.HeldOutImages(
        images=lambda: iter(photos),
        truth=truth,
        classes=["a", "b", "c"],
        task=task,
        split="test",
        thresholds=np.full(3, 0.3) if task is Task.MULTILABEL else None,
    )


def test_measure_compares_an_export_with_the_float_model(tmp_path: Path) -> None:
    model = _scratch(3)
    photos = _photos()
    path = tmp_path / "model.tflite"
    path.write_bytes(edge.tflite_bytes(model, EdgeFormat.TFLITE))
    reference = KerasModel(model)
    truth = np.array([int(np.argmax(reference.forward(p))) for p in photos])
    truth[0] = (truth[0] + 1) % 3  # one photo the float model gets wrong
    report = edge.measure(
        EdgeFormat.TFLITE,
        path,
        held_out=_held_out(photos, truth),
        reference=reference,
        max_loss_points=1.5,
        seconds=0.5,
    )
    assert report.images == len(photos) and report.agreement == 1.0
    assert report.accuracy == report.float_accuracy == pytest.approx(1 - 1 / len(photos))
    assert not report.degraded and report.max_probability_difference <= FLOAT_TOLERANCE
    described = report.describe()
    assert described["runtime"] == "litert" and described["size_bytes"] == path.stat().st_size
    # no loss at all is still more than a threshold below zero: degraded
    strict = edge.measure(
        EdgeFormat.TFLITE,
        path,
        held_out=_held_out(photos, truth),
        reference=reference,
        max_loss_points=-1.0,
        seconds=0.5,
    )
    assert strict.degraded and strict.describe()["degraded"] is True


def test_measure_multilabel_compares_label_sets(tmp_path: Path) -> None:
    model = _scratch(3)
    photos = _photos()
    path = tmp_path / "model.tflite"
    path.write_bytes(edge.tflite_bytes(model, EdgeFormat.TFLITE))
    reference = KerasModel(model)
    truth = np.stack([reference.forward(p) >= 0.3 for p in photos]).astype(np.float64)
    report = edge.measure(
        EdgeFormat.TFLITE,
        path,
        held_out=_held_out(photos, truth, Task.MULTILABEL),
        reference=reference,
        max_loss_points=1.5,
        seconds=0.1,
    )
    assert report.accuracy == report.float_accuracy == 1.0 and report.agreement == 1.0


def test_an_unreadable_count_of_images_is_an_error(tmp_path: Path) -> None:
    model = _scratch(3)
    path = tmp_path / "model.tflite"
    path.write_bytes(edge.tflite_bytes(model, EdgeFormat.TFLITE))
    photos = _photos()
    with pytest.raises(edge.EdgeExportError, match="expected"):
        edge.measure(
            EdgeFormat.TFLITE,
            path,
            held_out=_held_out(photos[:2], np.zeros(len(photos), dtype=int)),
            reference=KerasModel(model),
            max_loss_points=1.5,
            seconds=0.1,
        )
