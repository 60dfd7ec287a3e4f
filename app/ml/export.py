"""Exporting a trained classifier for runtimes other than Keras: ONNX and TF's SavedModel.

Both take what the `.keras` model takes: a batch of raw RGB pixels (float32, 0..255) of any
height and width; resizing, preprocessing and a test-time flip are inside the graph. Their
output is the Keras model's (softmax over the classes, or one sigmoid unit for a two-class
scratch model); the ONNX export also has the pooled features the model's head reads as a
second output, "embedding", which the service's "unknown" answer compares.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from app.ml.builders import FrozenTop

ONNX_FILE = "model.onnx"
# Opset 17 is what ONNX Runtime releases of the last years all run, and it has every op the
# models here convert to (Resize with half-pixel coordinates, depthwise convolutions).
ONNX_OPSET = 17
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
# The second output of a classifier's export: the pooled features its "unknown" score reads
# (app/ml/outliers.py). Clients that want the probabilities alone read the first.
EMBEDDING_NAME = "embedding"
# The largest difference allowed between ONNX Runtime's and Keras' probabilities: an export
# outside it is not kept (the version is then served by Keras).
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not answer like the model."""


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    seconds: float
    # against Keras on the parity check's pixels, each output's difference relative to its
    # largest magnitude (the probabilities': nearly their absolute difference)
    max_abs_difference: float

    def describe(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "opset": ONNX_OPSET,
            "seconds": round(self.seconds, 3),
            "max_abs_difference": self.max_abs_difference,
        }


def _serving_function(model: Any) -> Any:
    """The model as a traced function of (batch, height, width, 3) float32 pixels."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]
    def serve(pixels: Any) -> Any:
        return model(pixels, training=False)

    return serve


def parity_pixels(image_size: int, *, seed: int = 0) -> list[np.ndarray]:
    """Deterministic batches for comparing runtimes: the model's own size, and a smaller and
    a larger image of other aspect ratios (so the resize inside the graph is compared too)."""
    rng = np.random.default_rng(seed)
    shapes = [
        (image_size, image_size),
        (max(image_size * 3 // 4, 8), max(image_size * 5 // 4, 8)),
        (image_size * 2, image_size + 7),
    ]
    return [rng.uniform(0.0, 255.0, (2, h, w, 3)).astype(np.float32) for h, w in shapes]


def onnx_session(
    path: Path | bytes, *, threads: int = 0, providers: list[str] | None = None
) -> Any:
    """An ONNX Runtime session for the model at `path` (or serialized); `threads` 0 lets ONNX
    Runtime use every core."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one graph at a time: the parallelism is inside the ops
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ONNX Runtime's threads busy-wait for work between runs by default. In the API they
    # share the cores with the event loop and image decoding; measured on 2 cores with other
    # work running, a spinning session's single-image forward took 16 ms instead of 4-7 ms.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        path if isinstance(path, bytes) else str(path),
        sess_options=options,
        providers=providers or ["CPUExecutionProvider"],
    )


def _frozen_graph(serve: Any) -> tuple[Any, list[str], list[str]]:
    """The serving function as a GraphDef with every variable and captured tensor inlined as
    a constant. Converting the function directly leaves tensors it captures (the statistics
    of an adapted Normalization layer, in the linear head) as extra ONNX inputs."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    return (
        frozen.graph.as_graph_def(),
        [tensor.name for tensor in frozen.inputs],
        [tensor.name for tensor in frozen.outputs],
    )


def _rename_io(path: Path, renames: dict[str, str]) -> None:
    """TF tensor names ("pixels:0", "Identity:0") -> the names clients use ("pixels",
    "probabilities")."""
    import onnx

    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    onnx.save(model, str(path))


def resize_graph(image_size: int) -> bytes:
    """An ONNX graph resizing one (height, width, 3) image to (image_size, image_size, 3) the
    way the models' Resizing layer does (bilinear, half-pixel centres, no antialiasing): the
    ONNX Runtime path prepares images with it instead of calling TensorFlow per request."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, None, 3])
    resized = helper.make_tensor_value_info(
        "resized", TensorProto.FLOAT, [image_size, image_size, 3]
    )
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [3], [image_size, image_size, 3])
    node = helper.make_node(
        "Resize",
        ["image", "", "", "sizes"],
        ["resized"],
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
    graph = helper.make_graph([node], "resize", [image], [resized], initializer=[sizes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _convert(serve: Any, path: Path, *, output_names: tuple[str, ...] = ()) -> None:
    """tf2onnx on the frozen `serve`, written to `path`, its input named "pixels" (and its
    outputs, in order, `output_names`)."""
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    graph_def, inputs, outputs = _frozen_graph(serve)
    tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=inputs,
        output_names=outputs,
        opset=ONNX_OPSET,
        output_path=str(path),
    )
    renames = {inputs[0]: INPUT_NAME}
    renames.update(zip(outputs, output_names, strict=False))
    _rename_io(path, renames)


def _difference(expected: list[np.ndarray], answered: list[np.ndarray]) -> float:
    """The largest difference between two runtimes' outputs, each relative to its output's
    largest magnitude (probabilities: nearly as they are; features: to their scale); inf if
    the outputs differ in number or shape."""
    if len(expected) != len(answered):
        return math.inf
    largest = 0.0
    for want, got in zip(expected, answered, strict=True):
        if got.shape != want.shape:
            return math.inf
        scale = float(np.max(np.abs(want))) or 1.0
        largest = max(largest, float(np.max(np.abs(got - want))) / scale)
    return largest


def export_onnx(
    model: Any, path: Path, *, image_size: int, frozen_top: FrozenTop | None = None
) -> OnnxExport:
    """Convert `model` with tf2onnx into `path`, then check that ONNX Runtime answers like
    Keras on pixels of several sizes; ExportError (and no file) otherwise. Its outputs are
    "probabilities" and, where the model has pooled features to show, "embedding" (a
    fine-tuned model's from its `frozen_top`, builders.FrozenTop)."""
    import tensorflow as tf

    from app.ml.builders import with_embedding

    started = time.perf_counter()
    both = with_embedding(model, frozen_top=frozen_top)
    serve = _serving_function(model if both is None else both)
    names = (OUTPUT_NAME,) if both is None else (OUTPUT_NAME, EMBEDDING_NAME)
    try:
        _convert(serve, path, output_names=names)
    except Exception as exc:  # tf2onnx raises whatever its handlers raise
        path.unlink(missing_ok=True)
        raise ExportError(f"tf2onnx could not convert the model: {exc}") from exc
    seconds = time.perf_counter() - started
    try:
        session = onnx_session(path)
        difference = 0.0
        for pixels in parity_pixels(image_size):
            expected = [np.asarray(x) for x in tf.nest.flatten(serve(pixels))]
            answered = session.run(None, {INPUT_NAME: pixels})
            difference = max(difference, _difference(expected, answered))
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX Runtime could not run the export: {exc}") from exc
    if not difference <= PARITY_TOLERANCE:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"the ONNX export differs from the Keras model by {difference:.2e} "
            f"(more than {PARITY_TOLERANCE:g}); not kept"
        )
    return OnnxExport(path=path, seconds=seconds, max_abs_difference=difference)


def export_extractor(extractor: Any, path: Path, *, image_size: int) -> None:
    """The frozen base's feature extractor (builders.feature_extractor: resized pixels ->
    [pooled features, top-block inputs]) as ONNX, for feature extraction by ONNX Runtime.
    Checked like a model export (`_difference`): ExportError (and no file) if any output
    differs by more than 1e-4 of its own largest magnitude."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_NAME)]
    serve = tf.function(lambda pixels: extractor(pixels, training=False), input_signature=signature)
    partial = path.with_name(f".{path.name}.partial")
    try:
        _convert(serve, partial)
        pixels = np.random.default_rng(0).uniform(0, 255, (2, image_size, image_size, 3))
        pixels = pixels.astype(np.float32)
        expected = [np.asarray(x) for x in tf.nest.flatten(serve(pixels))]
        session = onnx_session(partial)
        answered = session.run(None, {INPUT_NAME: pixels})
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise ExportError(f"the feature extractor could not be exported: {exc}") from exc
    if not _difference(expected, answered) <= PARITY_TOLERANCE:
        partial.unlink(missing_ok=True)
        raise ExportError("the exported feature extractor differs from Keras'; not kept")
    partial.replace(path)


def export_saved_model(model: Any, directory: Path) -> None:
    """TF's SavedModel (what TF Serving loads) with one signature, `serving_default`, taking
    `pixels` (batch, height, width, 3) float32 0..255."""
    import tensorflow as tf

    serve = _serving_function(model)
    module = tf.Module()
    module.model = model  # tracks the variables
    tf.saved_model.save(
        module, str(directory), signatures={"serving_default": serve.get_concrete_function()}
    )
