"""Predictions: which version answers, keeping versions loaded, decoding and batching images.

Every protocol (`/predict`, TF Serving's `/v1`, the Open Inference Protocol's `/v2`) comes
through `predict_images`, so they share decoding, limits, errors and the loaded models.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from anyio import CapacityLimiter, to_thread
from PIL import Image

from app.core.config import get_settings
from app.core.errors import (
    BadRequestError,
    ConflictError,
    ModelUnavailableError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)
from app.core.metrics import FORWARD_BATCH, PREDICT_IMAGES, PREDICT_LATENCY, RUNTIME_IMAGES
from app.db.session import session_scope
from app.ml.images import (
    CorruptImageError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_opened,
    open_image,
)
from app.ml.serving import Answers, LoadedClassifier, ModelUnloadedError, load_classifier
from app.services import exports, model_versions, review
from app.services.auth import Principal
from app.services.explanations import ExplanationResult, explain_images
from app.services.model_versions import VersionRef

logger = logging.getLogger(__name__)

# Predictions decoding or waiting for their forward pass at once, per API process (beyond it
# they queue): twice the default largest batch, so one can form while the next decodes.
PREDICTION_THREADS = 64

# Every prediction response names the runtime that answered in this header.
RUNTIME_HEADER = "X-Model-Runtime"
# What a version is served in: its own model, or its int8 ONNX export.
FLOAT32, INT8 = "float32", "int8"


class ModelCache:
    """Loaded versions of this process, least recently used evicted first, keyed by version id.

    Loading reads and verifies the files and builds the graph (seconds), so it happens at
    start-up, on activation and in the background refresh, not on the request path, except for
    the first request for a version that is not active.
    """

    def __init__(self, *, capacity: int, max_batch: int) -> None:
        self.capacity = capacity
        self.max_batch = max_batch
        # (version id, precision) -> the loaded model: a version served both in float32 and
        # from its int8 export holds two places
        self._loaded: OrderedDict[tuple[uuid.UUID, str], LoadedClassifier] = OrderedDict()
        # The checksum each loaded version had: a version whose files changed since (an ONNX
        # export added to it) is loaded again by the next refresh.
        self._checksums: dict[uuid.UUID, str] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[uuid.UUID, str], threading.Lock] = {}
        self.warmed = False
        self.loads = 0  # versions loaded from disk by this process, ever
        self._thread_limiter: CapacityLimiter | None = None
        # (owner, admin?, name, version) -> (the version resolved, when to ask again)
        self._resolved: dict[tuple[str, bool, str | None, int | None], tuple[VersionRef, float]]
        self._resolved = {}

    def get(self, ref: VersionRef, *, precision: str = FLOAT32) -> LoadedClassifier:
        """The loaded version (`precision` int8: its int8 ONNX export, ConflictError when
        that may not answer), loading it (once, even if many threads ask) if needed."""
        key = (ref.id, precision)
        with self._lock:
            if (found := self._loaded.get(key)) is not None:
                self._loaded.move_to_end(key)
                return found
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if (found := self._loaded.get(key)) is not None:
                    return found
            classifier = self._load(ref, precision=precision)
            with self._lock:
                self.loads += 1
                self._loaded[key] = classifier
                self._checksums[ref.id] = ref.sha256
                self._loading.pop(key, None)
                evicted = []
                while len(self._loaded) > self.capacity:
                    (old_id, _), old_classifier = self._loaded.popitem(last=False)
                    if not any(version_id == old_id for version_id, _ in self._loaded):
                        self._checksums.pop(old_id, None)
                    evicted.append(old_classifier)
        for old in evicted:
            old.close()
        return classifier

    def _load(self, ref: VersionRef, *, precision: str) -> LoadedClassifier:
        int8_onnx = None
        if precision == INT8:
            # ConflictError (409) when the export may not answer: missing, building, degraded
            with session_scope() as session:
                int8_onnx = exports.int8_file(session, ref=ref)
        started = time.perf_counter()
        try:
            folder = model_versions.version_folder(ref)
            settings = get_settings()
            classifier = load_classifier(
                folder,
                max_batch=self.max_batch,
                name=f"{ref.name}-v{ref.version}-{precision}",
                runtime=settings.serving_runtime,
                onnx_threads=settings.onnx_threads,
                on_batch=FORWARD_BATCH.observe,
                int8_onnx=int8_onnx,
            )
        except Exception as exc:
            # Checksums, missing files, and Keras refusing to deserialize (it raises TypeError
            # or ValueError): whatever it is, this version cannot answer, and the client hears why.
            logger.error("cannot load %s v%s: %s", ref.name, ref.version, exc)
            raise ModelUnavailableError(
                f"{ref.name} v{ref.version} cannot be loaded: {exc}"
            ) from exc
        logger.info(
            "loaded %s v%s (%s on %s) in %.2f s",
            ref.name,
            ref.version,
            classifier.runtime,
            classifier.device,
            time.perf_counter() - started,
        )
        return classifier

    def resolve(self, *, name: str | None, version: int | None, principal: Principal) -> VersionRef:
        """Which version answers a prediction (model_versions.resolve_version), remembered
        for `VERSION_RESOLUTION_CACHE_SECONDS`: the database round trip was a millisecond of
        every prediction. Activating or deleting here forgets it at once."""
        key = (principal.owner, principal.is_admin, name, version)
        with self._lock:
            found = self._resolved.get(key)
        if found is not None and found[1] > time.monotonic():
            return found[0]
        with session_scope() as session:
            ref = model_versions.resolve_version(
                session, name=name, version=version, principal=principal
            )
        ttl = get_settings().version_resolution_cache_seconds
        if ttl > 0:
            with self._lock:
                if len(self._resolved) > 10_000:  # bounded: start over
                    self._resolved.clear()
                self._resolved[key] = (ref, time.monotonic() + ttl)
        return ref

    def thread_limiter(self) -> CapacityLimiter:
        """The worker threads predictions may hold at once (created in the event loop on first
        use). Their own, apart from the default pool: a prediction's thread waits for its
        forward pass, and that must not keep every other route's thread busy."""
        if self._thread_limiter is None:
            self._thread_limiter = CapacityLimiter(PREDICTION_THREADS)
        return self._thread_limiter

    def forget_resolutions(self) -> None:
        with self._lock:
            self._resolved.clear()

    def is_loaded(self, version_id: uuid.UUID, *, precision: str = FLOAT32) -> bool:
        with self._lock:
            return (version_id, precision) in self._loaded

    def get_loaded(
        self, version_id: uuid.UUID, *, precision: str = FLOAT32
    ) -> LoadedClassifier | None:
        """The version if it is loaded; never loads."""
        with self._lock:
            return self._loaded.get((version_id, precision))

    def loaded_ids(self) -> list[uuid.UUID]:
        """The versions loaded (in float32, from their int8 export, or both)."""
        with self._lock:
            return list(dict.fromkeys(version_id for version_id, _ in self._loaded))

    def evict(self, version_id: uuid.UUID) -> None:
        """Unload the version in every precision."""
        with self._lock:
            self._resolved.clear()
            keys = [key for key in self._loaded if key[0] == version_id]
            classifiers = [self._loaded.pop(key) for key in keys]
            self._checksums.pop(version_id, None)
        for classifier in classifiers:
            classifier.close()

    def close(self) -> None:
        with self._lock:
            loaded = list(self._loaded.values())
            self._loaded.clear()
        for classifier in loaded:
            classifier.close()

    def refresh(self) -> None:
        """Load every active version (up to capacity) and forget versions deleted elsewhere."""
        with session_scope() as session:
            active = model_versions.active_versions(session)
            known = model_versions.existing_version_ids(session, self.loaded_ids())
        for version_id in self.loaded_ids():
            if version_id not in known:
                self.evict(version_id)
        for ref in active[: self.capacity]:
            with self._lock:
                changed = self._checksums.get(ref.id, ref.sha256) != ref.sha256
            if changed:
                self.evict(ref.id)
            precision = ref.serving_precision
            if not self.is_loaded(ref.id, precision=precision):
                # A broken version is logged; requests for it get the 503 with the reason (or
                # the 409 of an int8 export that may not answer).
                with contextlib.suppress(ModelUnavailableError, ConflictError):
                    self.get(ref, precision=precision)
        self.warmed = True


async def keep_warm(cache: ModelCache, *, interval: float) -> None:
    """Background task of the API process: refresh the cache now and every `interval` s."""
    while True:
        try:
            await to_thread.run_sync(cache.refresh)
        except Exception:
            logger.exception("refreshing the loaded models failed; retrying")
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class ImagePayload:
    data: bytes
    filename: str | None = None


@dataclass(frozen=True)
class PredictionResult:
    version: VersionRef
    classes: list[str]
    probabilities: np.ndarray  # (images, classes), in the order of `classes`
    seconds: float
    runtime: str  # what ran the forward pass: "onnxruntime" or "keras"
    explanations: list[ExplanationResult] | None = None  # with explain=True
    # Each image's outlier score and the threshold over which it is unknown (None: the version
    # has no unknown answer, or the request turned it off).
    outlier_scores: np.ndarray | None = None
    outlier_threshold: float | None = None
    # A multi-label version's threshold per label (the request's where it set one); None:
    # multiclass.
    thresholds: np.ndarray | None = None

    @property
    def unknown(self) -> list[bool]:
        if self.outlier_scores is None or self.outlier_threshold is None:
            return [False] * len(self.probabilities)
        return [bool(score > self.outlier_threshold) for score in self.outlier_scores]


class MemoryBudget:
    """Bytes that image decoding may hold at once in this process. Each decode reserves what
    its header says it will need (at most the whole budget) and waits for that share, so many
    concurrent decompression bombs cost one budget, not one image's worth each."""

    def __init__(self, total_bytes: int) -> None:
        self.total = total_bytes
        self.used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, amount: int, *, timeout: float) -> Iterator[None]:
        amount = min(amount, self.total)
        with self._changed:
            if not self._changed.wait_for(lambda: self.used + amount <= self.total, timeout):
                raise ServiceUnavailableError(
                    "the server is busy decoding other images; retry shortly",
                    headers={"Retry-After": "1"},
                )
            self.used += amount
        try:
            yield
        finally:
            with self._changed:
                self.used -= amount
                self._changed.notify_all()


def _decode_all(
    images: list[ImagePayload],
    classifier: LoadedClassifier,
    budget: MemoryBudget,
    *,
    keep_for_overlays: bool,
) -> tuple[np.ndarray, list[Image.Image]]:
    """Every image decoded at the model's scale and resized for it, one at a time under the
    memory budget; with `keep_for_overlays`, each decoded image shrunk to the size an
    explanation is drawn at (nothing else of a decoded image outlives its turn)."""
    settings = get_settings()
    arrays: list[np.ndarray] = []
    kept: list[Image.Image] = []
    for index, image in enumerate(images):
        which = f"image {index + 1}" + (f" ({image.filename})" if image.filename else "")
        if len(image.data) > settings.max_image_file_bytes:
            raise PayloadTooLargeError(
                f"{which} is larger than the limit of {settings.max_image_file_bytes} bytes"
            )
        try:
            opened = open_image(
                image.data,
                max_pixels=settings.max_image_pixels,
                target_size=classifier.image_size,
            )
            with budget.reserve(opened.decode_bytes, timeout=settings.predict_timeout_seconds):
                decoded = decode_opened(opened)
                arrays.append(classifier.prepare(decoded))
                if keep_for_overlays:
                    from app.ml.explain import overlay_base

                    kept.append(overlay_base(decoded.image, upright_size=decoded.upright_size))
                del decoded
        except ImageTooLargeError as exc:
            raise PayloadTooLargeError(f"{which}: {exc}") from exc
        except UnsupportedImageError as exc:
            raise UnsupportedMediaTypeError(f"{which}: {exc}") from exc
        except (CorruptImageError, ImageDecodeError) as exc:
            raise BadRequestError(f"{which}: {exc}") from exc
    return np.stack(arrays), kept


@dataclass(frozen=True)
class _Answered:
    ref: VersionRef
    classifier: LoadedClassifier
    pixels: np.ndarray
    overlay_images: list[Image.Image]  # empty unless explanations were asked for
    answers: Answers


def _forward(classifier: LoadedClassifier, pixels: np.ndarray, *, timeout: float) -> Answers:
    """The classifier's answer for a batch, or 503 if it does not come within `timeout`
    (a wedged model must not hold requests forever)."""
    future = classifier.batcher.submit(pixels)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise ModelUnavailableError(
            f"the model did not answer within {timeout:g} s; retry shortly"
        ) from None


def _answer(
    cache: ModelCache,
    budget: MemoryBudget,
    images: list[ImagePayload],
    name: str | None,
    version: int | None,
    principal: Principal,
    explain: bool,
    precision: str | None,
) -> _Answered:
    """Resolve the version, decode the images and wait for the batcher's answer, all in the
    request's one worker thread: a return to the event loop between decoding and the forward
    pass was one more thread switch per prediction."""
    ref = cache.resolve(name=name, version=version, principal=principal)
    precision = precision or ref.serving_precision
    classifier = cache.get(ref, precision=precision)
    pixels, overlay_images = _decode_all(images, classifier, budget, keep_for_overlays=explain)
    timeout = get_settings().predict_timeout_seconds
    try:
        answers = _forward(classifier, pixels, timeout=timeout)
    except ModelUnloadedError as exc:  # evicted between lookup and submit: load again once
        logger.info("retrying %s v%s after eviction: %s", ref.name, ref.version, exc)
        classifier = cache.get(ref, precision=precision)
        answers = _forward(classifier, pixels, timeout=timeout)
    return _Answered(ref, classifier, pixels, overlay_images, answers)


async def predict_images(
    *,
    cache: ModelCache,
    budget: MemoryBudget,
    principal: Principal,
    images: list[ImagePayload],
    model: str | None = None,
    version: int | None = None,
    explain: bool = False,
    detect_unknown: bool = True,
    outlier_threshold: float | None = None,
    label_threshold: float | None = None,
    precision: str | None = None,
) -> PredictionResult:
    """Class probabilities of each image from the chosen version, whether each is unknown
    (unlike every training image: `detect_unknown`, at the version's threshold or
    `outlier_threshold`), and with `explain` a Grad-CAM of each image for its top label. A
    multi-label version's labels pass at their own thresholds, or all at `label_threshold`.
    `precision` (float32 or int8; default the version's serving_precision) picks the model
    or its int8 ONNX export. Database, decoding, the forward pass and the explanations all
    run off the event loop."""
    started = time.perf_counter()
    settings = get_settings()
    if not images:
        raise BadRequestError("send at least one image")
    if len(images) > settings.max_predict_images:
        raise PayloadTooLargeError(f"at most {settings.max_predict_images} images per request")
    if explain and len(images) > settings.max_explained_images:
        raise PayloadTooLargeError(
            f"explain=true takes at most {settings.max_explained_images} images per request "
            f"(this one has {len(images)}); send the others without it, or in more requests"
        )
    answered = await to_thread.run_sync(
        _answer,
        cache,
        budget,
        images,
        model,
        version,
        principal,
        explain,
        precision,
        limiter=cache.thread_limiter(),
    )
    ref, classifier = answered.ref, answered.classifier
    probabilities, scores = answered.answers.probabilities, answered.answers.outlier_scores
    threshold = None
    if detect_unknown and scores is not None and classifier.outliers is not None:
        threshold = outlier_threshold
        if threshold is None:
            threshold = classifier.outliers.threshold
    else:
        scores = None
    thresholds = classifier.thresholds
    if thresholds is not None and label_threshold is not None:
        thresholds = np.full(len(thresholds), label_threshold)
    explanations = None
    if explain:
        explain_all = functools.partial(
            explain_images,
            classifier=classifier,
            images=answered.overlay_images,
            pixels=answered.pixels,
            principal=principal,
        )
        explanations = await to_thread.run_sync(explain_all)
    seconds = time.perf_counter() - started
    PREDICT_LATENCY.labels(ref.name).observe(seconds)
    PREDICT_IMAGES.labels(ref.name).inc(len(images))
    RUNTIME_IMAGES.labels(classifier.runtime.value).inc(len(images))
    result = PredictionResult(
        version=ref,
        classes=classifier.classes,
        probabilities=probabilities,
        seconds=seconds,
        runtime=classifier.runtime.value,
        explanations=explanations,
        outlier_scores=scores,
        outlier_threshold=threshold,
        thresholds=thresholds,
    )
    # Answers below the model's review threshold, and unknown ones, are kept for people to
    # label (no database work at all for models without a review threshold).
    await review.keep_uncertain(
        principal=principal,
        model_name=ref.name,
        model_version=ref.version,
        classes=classifier.classes,
        probabilities=probabilities,
        unknown=result.unknown,
        images=images,
        thresholds=thresholds,
    )
    return result


def loaded_or_404(
    cache: ModelCache, *, name: str, version: int | None, principal: Principal
) -> tuple[VersionRef, LoadedClassifier]:
    """The version and its classifier for metadata requests (loaded if needed); 404 when the
    name, the version or an active version is missing."""
    with session_scope() as session:
        try:
            ref = model_versions.resolve_version(
                session, name=name, version=version, principal=principal
            )
        except (NotFoundError, ConflictError) as exc:
            raise NotFoundError(exc.detail) from exc
    return ref, cache.get(ref)
