"""Grad-CAM explanations of predictions: computed on request (`explain=true`), kept as PNG
files per owner so that `GET /explanations/{id}.png` can show them, at most
`MAX_EXPLANATIONS_PER_OWNER` files and `MAX_EXPLANATION_BYTES_PER_OWNER` bytes each (the
oldest are removed). Each overlay is drawn at most app.ml.explain.OVERLAY_MAX_SIDE pixels on
its longer side, so one is at most ~0.8 MB."""

from __future__ import annotations

import base64
import os
import time
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.core.config import get_settings
from app.core.errors import NotFoundError
from app.ml.serving import LoadedClassifier
from app.services.auth import Principal
from app.services.storage import get_storage, owner_key
from models_store import ObjectNotFoundError


@dataclass(frozen=True)
class ExplanationResult:
    id: uuid.UUID
    label: str  # the label explained: the model's top one
    probability: float
    png: bytes  # the image with the heatmap over it

    def as_dict(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "label": self.label,
            "probability": self.probability,
            "url": f"/explanations/{self.id}.png",
            "png_base64": base64.b64encode(self.png).decode(),
        }


def explain_images(
    *,
    classifier: LoadedClassifier,
    images: list[Image.Image],
    pixels: np.ndarray,
    principal: Principal,
) -> list[ExplanationResult]:
    """Grad-CAM of each image for its top label (one forward and one backward pass each, two
    of each for a test-time-flip model), drawn over `images` (the decoded images, shrunk by
    overlay_base) and stored for the principal's owner."""
    from app.ml.explain import overlay_png

    grad_cam = classifier.grad_cam()
    results = []
    for image, resized in zip(images, pixels, strict=True):
        explanation = grad_cam.explain(resized[None])
        scores = explanation.probabilities
        if scores.shape[-1] == 1:  # one sigmoid unit: the probability of the second class
            scores = np.array([1.0 - scores[0], scores[0]])
        png = overlay_png(image, explanation.heatmap)
        result = ExplanationResult(
            id=time_ordered_id(),
            label=classifier.classes[explanation.class_index],
            probability=float(scores[explanation.class_index]),
            png=png,
        )
        _store(principal.owner, result)
        results.append(result)
    return results


def _key(owner: str, explanation_id: uuid.UUID) -> str:
    return f"{owner_key(owner)}/{explanation_id}.png"


def time_ordered_id() -> uuid.UUID:
    """A UUID version 7: milliseconds since the epoch, then random bits, so that the names of
    an owner's explanations sort by age in a folder listing (a bucket's too)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return uuid.UUID(int=value)


def _store(owner: str, result: ExplanationResult) -> None:
    """Keep the PNG, then drop the owner's oldest past either limit (names sort by age)."""
    settings = get_settings()
    store = get_storage().explanations
    store.put_bytes(_key(owner, result.id), result.png)
    newest_first = sorted(store.keys(f"{owner_key(owner)}/"), key=lambda f: f.key, reverse=True)
    kept_bytes = 0
    for kept_files, found in enumerate(newest_first, start=1):
        kept_bytes += found.size
        if (
            kept_files > settings.max_explanations_per_owner
            or kept_bytes > settings.max_explanation_bytes_per_owner
        ):
            store.delete(found.key)


def explanation_png(explanation_id: uuid.UUID, *, principal: Principal) -> bytes:
    """The stored PNG of one of the owner's explanations; 404 for anyone else's (an admin
    key sees only its own owner's: explanations carry the images people sent)."""
    try:
        return get_storage().explanations.get_bytes(_key(principal.owner, explanation_id))
    except ObjectNotFoundError:
        raise NotFoundError(
            f"no explanation {explanation_id} (they are kept for a while only)"
        ) from None
