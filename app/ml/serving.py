"""Serving a trained classifier: load a stored version, run it on decoded images in batches.

Pure Keras/NumPy: no web or database imports. The service layer decides which version to load
and when; this module only knows how to turn pixels into class probabilities fast.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.data import resize_pixels
from app.ml.evaluate import class_probabilities
from app.ml.images import DecodedImage, image_to_array

# The files a training job writes into every model version (see app/services/training.py).
MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
META_FILE = "meta.json"


def write_model_files(
    folder: Path, *, model: Any, classes: list[str], metadata: dict[str, Any]
) -> None:
    """The files of one model version: the `.keras` model, its labels and its metadata
    (`metadata["input"]["image_size"]` is the size the model resizes to)."""
    model.save(folder / MODEL_FILE)
    (folder / LABELS_FILE).write_text(json.dumps(classes))
    (folder / META_FILE).write_text(json.dumps(metadata, indent=2))


class ModelUnloadedError(RuntimeError):
    """The model was unloaded (evicted from the cache) before this request reached it."""


@dataclass
class _Request:
    inputs: np.ndarray
    future: Future[np.ndarray] = field(default_factory=Future)


class MicroBatcher:
    """One thread runs `forward` on everything queued while the previous batch ran.

    A lone client pays no waiting time (its request runs at once); under concurrent load the
    requests that arrive during a forward pass share the next one, which on CPU and GPU costs
    much less per image than one pass each.
    """

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int,
        name: str,
        on_batch: Callable[[int], None] = lambda images: None,
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

    def submit(self, inputs: np.ndarray) -> Future[np.ndarray]:
        """Queue a (n, h, w, 3) batch; the future holds its (n, classes) probabilities."""
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


@dataclass
class LoadedClassifier:
    """A stored model in memory, ready to answer."""

    classes: list[str]
    image_size: int
    metadata: dict[str, Any]
    forward: Callable[[np.ndarray], np.ndarray]  # (n, size, size, 3) pixels -> probabilities
    batcher: MicroBatcher

    def prepare(self, decoded: DecodedImage) -> np.ndarray:
        """Decoded image -> (size, size, 3) float32, resized exactly as the model's own
        Resizing layer would, so images of different sizes can share a batch."""
        return resize_pixels(image_to_array(decoded.image), image_size=self.image_size)

    def close(self) -> None:
        self.batcher.close()


def load_classifier(
    folder: Path,
    *,
    max_batch: int,
    name: str,
    on_batch: Callable[[int], None] = lambda images: None,
) -> LoadedClassifier:
    """Load a model version directory (already checksum-verified by the caller) and warm it.
    `on_batch(images)` is called after every forward pass (for metrics)."""
    import keras
    import tensorflow as tf

    import app.ml.layers  # noqa: F401  (registers the custom preprocessing layers)

    metadata: dict[str, Any] = json.loads((folder / META_FILE).read_text())
    classes: list[str] = json.loads((folder / LABELS_FILE).read_text())
    image_size = int(metadata["input"]["image_size"])
    model = keras.saving.load_model(folder / MODEL_FILE, compile=False)

    # One traced graph for every batch size: no retracing when the batch size changes.
    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
        reduce_retracing=True,
    )
    def graph(pixels: Any) -> Any:
        return model(pixels, training=False)

    def forward(pixels: np.ndarray) -> np.ndarray:
        raw = np.asarray(graph(tf.convert_to_tensor(pixels, dtype=tf.float32)))
        return class_probabilities(raw, len(classes))

    forward(np.zeros((1, image_size, image_size, 3), dtype=np.float32))  # trace now, not later
    batcher = MicroBatcher(forward, max_batch=max_batch, name=name, on_batch=on_batch)
    return LoadedClassifier(
        classes=classes, image_size=image_size, metadata=metadata, forward=forward,
        batcher=batcher,
    )  # fmt: skip


def top_k(probabilities: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    """The k most likely classes of one image, most likely first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": classes[i], "probability": float(probabilities[i])} for i in order]
