"""Serving a trained classifier: load a stored version, run it on decoded images in batches.

Pure Keras/NumPy: no web or database imports. The service layer decides which version to load
and when; this module only knows how to turn pixels into class probabilities fast.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.ml.data import resize_pixels
from app.ml.evaluate import class_probabilities
from app.ml.export import (
    INPUT_NAME,
    ONNX_FILE,
    ExportError,
    export_onnx,
    onnx_session,
    resize_graph,
)
from app.ml.images import DecodedImage, image_to_array
from app.ml.outliers import OUTLIER_FILE, OutlierIndex

if TYPE_CHECKING:
    from app.ml.builders import FrozenTop

# Written beside a fine-tuned model (app.ml.builders.FrozenTop; not imported here, which would
# import Keras with this module).
FROZEN_TOP_FILE = "frozen_top.npz"

logger = logging.getLogger(__name__)

# The files a training job writes into every model version (see app/services/training.py).
MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
META_FILE = "meta.json"


def write_model_files(
    folder: Path,
    *,
    model: Any,
    classes: list[str],
    metadata: dict[str, Any],
    onnx: bool = True,
    outliers: OutlierIndex | None = None,
    frozen_top: FrozenTop | None = None,
) -> dict[str, Any]:
    """The files of one model version: the `.keras` model, its ONNX export (`onnx`), its labels,
    its training features for the "unknown" answer (`outliers`; a fine-tuned model's
    `frozen_top` computes them) and its metadata
    (`metadata["input"]["image_size"]` is the size the model resizes to). Returns what was
    exported, also written to the metadata as "exports": an export that fails is recorded with
    its reason, and the version is served by Keras."""
    model.save(folder / MODEL_FILE)
    if outliers is not None:
        outliers.save(folder / OUTLIER_FILE)
    if frozen_top is not None:
        frozen_top.save(folder / FROZEN_TOP_FILE)
    exports: dict[str, Any] = {}
    if onnx:
        try:
            exported = export_onnx(
                model,
                folder / ONNX_FILE,
                image_size=int(metadata["input"]["image_size"]),
                frozen_top=frozen_top,
            )
            exports["onnx"] = exported.describe()
        except ExportError as exc:
            logger.warning("no ONNX export: %s", exc)
            exports["onnx"] = {"error": str(exc)}
    (folder / LABELS_FILE).write_text(json.dumps(classes))
    (folder / META_FILE).write_text(json.dumps({**metadata, "exports": exports}, indent=2))
    return exports


class ModelUnloadedError(RuntimeError):
    """The model was unloaded (evicted from the cache) before this request reached it."""


@dataclass(frozen=True)
class Answers:
    """A forward pass's answers for a batch: the class probabilities, and each image's
    outlier score where the version has an "unknown" answer."""

    probabilities: np.ndarray  # (images, classes)
    outlier_scores: np.ndarray | None = None  # (images,)

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, rows: slice) -> Answers:
        scores = self.outlier_scores
        return Answers(self.probabilities[rows], None if scores is None else scores[rows])


Forward = Callable[[np.ndarray], Answers]


@dataclass
class _Request:
    inputs: np.ndarray
    future: Future[Answers] = field(default_factory=Future)


class MicroBatcher:
    """One thread runs `forward` on everything queued while the previous batch ran.

    A lone client pays no waiting time (its request runs at once); under concurrent load the
    requests that arrive during a forward pass share the next one, which on CPU and GPU costs
    much less per image than one pass each.
    """

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch: int,
        name: str,
        on_batch: Callable[[int], None] = lambda _: None,
    ) -> None:
        self._forward = forward
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        # Held while checking `_closed` and queueing, and while closing: no request can be
        # queued after the stop marker, where the thread would never see it.
        self._state = threading.Lock()
        self._closed = False
        self.batches = 0
        self.images = 0
        self._thread.start()

    def submit(self, inputs: np.ndarray) -> Future[Answers]:
        """Queue a (n, h, w, 3) batch; the future holds its answers."""
        request = _Request(inputs)
        with self._state:
            if self._closed:
                raise ModelUnloadedError("this model has been unloaded")
            self._queue.put(request)
        return request.future

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            # Whatever is still queued (the thread failed, or requests came with the stop
            # marker) is answered, never left waiting.
            while True:
                try:
                    left = self._queue.get_nowait()
                except queue.Empty:
                    break
                if left is not None and left.future.set_running_or_notify_cancel():
                    left.future.set_exception(ModelUnloadedError("the model was unloaded"))

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch, count = [first], len(first.inputs)
            while count < self._max_batch:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    stopping = True
                    break
                batch.append(following)
                count += len(following.inputs)
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        live = [request for request in batch if request.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            outputs = self._forward(np.concatenate([request.inputs for request in live]))
        except BaseException as exc:
            for request in live:
                request.future.set_exception(exc)
            return
        self.batches += 1
        self._on_batch(len(outputs))
        offset = 0
        for request in live:
            size = len(request.inputs)
            request.future.set_result(outputs[offset : offset + size])
            offset += size
        self.images += offset


class Runtime(enum.StrEnum):
    """What runs a loaded model's forward pass."""

    KERAS = "keras"
    ONNXRUNTIME = "onnxruntime"
    # the version's int8 ONNX export (static QDQ), run by ONNX Runtime
    ONNXRUNTIME_INT8 = "onnxruntime_int8"


# "auto": ONNX Runtime when the version has an ONNX export, Keras otherwise.
RUNTIME_CHOICES = ("auto", Runtime.KERAS.value, Runtime.ONNXRUNTIME.value)


@dataclass
class LoadedClassifier:
    """A stored model in memory, ready to answer."""

    classes: list[str]
    image_size: int
    metadata: dict[str, Any]
    forward: Forward  # (n, size, size, 3) pixels -> probabilities (and outlier scores)
    batcher: MicroBatcher
    runtime: Runtime
    device: str  # where the forward pass runs: "cpu", "gpu" or "cuda"
    # (h, w, 3) pixels -> (size, size, 3), as the model's own Resizing layer resizes
    resize: Callable[[np.ndarray], np.ndarray]
    folder: Path
    outliers: OutlierIndex | None = None  # None: this version has no "unknown" answer
    # A multi-label version's threshold per label, in the order of `classes`; None: multiclass.
    thresholds: np.ndarray | None = None
    _grad_cam: Any = None
    _grad_cam_lock: threading.Lock = field(default_factory=threading.Lock)

    def grad_cam(self) -> Any:
        """The model's Grad-CAM (app.ml.explain.GradCam), built on first use: it needs the
        Keras model, which the ONNX Runtime path does not otherwise load."""
        with self._grad_cam_lock:
            if self._grad_cam is None:
                from app.ml.explain import GradCam

                self._grad_cam = GradCam(load_keras_model(self.folder))
            return self._grad_cam

    def prepare(self, decoded: DecodedImage) -> np.ndarray:
        """Decoded image -> (size, size, 3) float32, resized as the model's own Resizing
        layer would, so images of different sizes can share a batch."""
        return self.resize(image_to_array(decoded.image))

    def close(self) -> None:
        self.batcher.close()


# pixels -> the model's outputs: probabilities, and (where asked for and the model has them)
# the pooled features its head reads
RawForward = Callable[[np.ndarray], list[np.ndarray]]


def load_keras_model(folder: Path) -> Any:
    """A version's `.keras` model, for inference (not compiled)."""
    import keras

    import app.ml.layers  # noqa: F401  (registers the custom layers a saved model may hold)

    return keras.saving.load_model(folder / MODEL_FILE, compile=False)


def _keras_forward(folder: Path, *, image_size: int, embedding: bool) -> tuple[RawForward, str]:
    import tensorflow as tf

    from app.ml.builders import with_embedding

    model = load_keras_model(folder)
    if embedding:
        model = with_embedding(model, frozen_top=load_frozen_top(folder)) or model

    # One traced graph for every batch size: no retracing when the batch size changes.
    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
        reduce_retracing=True,
    )
    def graph(pixels: Any) -> Any:
        return model(pixels, training=False)

    def forward(pixels: np.ndarray) -> list[np.ndarray]:
        outputs = graph(tf.convert_to_tensor(pixels, dtype=tf.float32))
        return [np.asarray(output) for output in tf.nest.flatten(outputs)]

    device = "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    return forward, device


def onnx_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it (the GPU extra), then the CPU. Without a
    GPU the CUDA provider fails to start and ONNX Runtime falls back to the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _onnx_forward(path: Path, *, threads: int) -> tuple[RawForward, str]:
    session = onnx_session(path, threads=threads, providers=onnx_providers())

    def forward(pixels: np.ndarray) -> list[np.ndarray]:
        outputs: list[np.ndarray] = session.run(None, {INPUT_NAME: pixels})
        return outputs

    provider = session.get_providers()[0]
    return forward, "cuda" if provider == "CUDAExecutionProvider" else "cpu"


def _onnx_resize(image_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The Resizing layer's resize run by ONNX Runtime: a request served by ONNX Runtime
    then never calls TensorFlow (its per-call overhead was a third of the forward pass's
    time in a profile of the API). One thread: images are resized one at a time, in the
    request's worker thread."""
    session = onnx_session(resize_graph(image_size), threads=1)

    def resize(pixels: np.ndarray) -> np.ndarray:
        resized: np.ndarray = session.run(None, {"image": pixels.astype(np.float32)})[0]
        return resized

    return resize


def load_classifier(
    folder: Path,
    *,
    max_batch: int,
    name: str,
    runtime: str = "auto",
    onnx_threads: int = 0,
    on_batch: Callable[[int], None] = lambda _: None,
    int8_onnx: Path | None = None,
) -> LoadedClassifier:
    """Load a model version directory (already checksum-verified by the caller) and warm it.
    `runtime`: "auto" (ONNX Runtime when the version has an ONNX export), "keras" or
    "onnxruntime"; `int8_onnx` (the version's int8 ONNX export, checked by the caller) is run
    by ONNX Runtime instead of them. `on_batch(images)` is called after every forward pass
    (for metrics)."""
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIME_CHOICES)}")
    metadata: dict[str, Any] = json.loads((folder / META_FILE).read_text())
    classes: list[str] = json.loads((folder / LABELS_FILE).read_text())
    image_size = int(metadata["input"]["image_size"])
    has_onnx = (folder / ONNX_FILE).is_file()
    if runtime == Runtime.ONNXRUNTIME and not has_onnx:
        raise FileNotFoundError(f"{name} has no {ONNX_FILE} (export it first)")
    outliers = _outlier_index(folder, metadata)
    chosen = Runtime.ONNXRUNTIME if has_onnx and runtime != Runtime.KERAS else Runtime.KERAS
    if int8_onnx is not None:
        chosen = Runtime.ONNXRUNTIME_INT8
        raw, device = _onnx_forward(int8_onnx, threads=onnx_threads)
        resize = _onnx_resize(image_size)
    elif chosen is Runtime.ONNXRUNTIME:
        raw, device = _onnx_forward(folder / ONNX_FILE, threads=onnx_threads)
        resize = _onnx_resize(image_size)
    else:
        raw, device = _keras_forward(folder, image_size=image_size, embedding=outliers is not None)
        resize = functools.partial(resize_pixels, image_size=image_size)

    def forward(pixels: np.ndarray) -> Answers:
        outputs = raw(pixels)
        probabilities = class_probabilities(outputs[0], len(classes))
        if outliers is None or len(outputs) < 2:
            return Answers(probabilities)
        return Answers(probabilities, outliers.scores(outputs[1]))

    warmed = forward(np.zeros((1, image_size, image_size, 3), dtype=np.float32))
    if warmed.outlier_scores is None:
        # the runtime's model has no features to compare (an ONNX export older than the
        # index): the version answers without "unknown", and `forward` (reading this same
        # variable) skips the scores
        outliers = None
    batcher = MicroBatcher(forward, max_batch=max_batch, name=name, on_batch=on_batch)
    return LoadedClassifier(
        classes=classes,
        image_size=image_size,
        metadata=metadata,
        forward=forward,
        batcher=batcher,
        runtime=chosen,
        device=device,
        resize=resize,
        folder=folder,
        outliers=outliers,
        thresholds=label_thresholds(metadata, classes),
    )


def label_thresholds(metadata: dict[str, Any], classes: list[str]) -> np.ndarray | None:
    """A multi-label version's thresholds (meta.json "thresholds", one per label), or None."""
    stored = metadata.get("thresholds")
    if metadata.get("task") != "multilabel" or not isinstance(stored, dict):
        return None
    return np.array([float(stored[name]) for name in classes], dtype=np.float64)


def load_frozen_top(folder: Path) -> FrozenTop | None:
    """A fine-tuned version's frozen top block (builders.FrozenTop), if it has one."""
    from app.ml.builders import FrozenTop

    path = folder / FROZEN_TOP_FILE
    return FrozenTop.load(path) if path.is_file() else None


def _outlier_index(folder: Path, metadata: dict[str, Any]) -> OutlierIndex | None:
    described = metadata.get("outliers")
    path = folder / OUTLIER_FILE
    if not isinstance(described, dict) or not path.is_file():
        return None
    return OutlierIndex.load(path, described=described)


def top_k(probabilities: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    """The k most likely classes of one image, most likely first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": classes[i], "probability": float(probabilities[i])} for i in order]


def every_label(
    probabilities: np.ndarray, classes: list[str], thresholds: np.ndarray
) -> list[dict[str, Any]]:
    """A multi-label answer: every label, most likely first, with its threshold and whether
    its probability reaches it."""
    order = np.argsort(-probabilities, kind="stable")
    return [
        {
            "label": classes[i],
            "probability": float(probabilities[i]),
            "threshold": float(thresholds[i]),
            "above_threshold": bool(probabilities[i] >= thresholds[i]),
        }
        for i in order
    ]
