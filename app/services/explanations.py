"""Grad-CAM explanations of predictions: computed on request (`explain=true`), kept as PNG
files per owner so that `GET /explanations/{id}.png` can show them, at most
`MAX_EXPLANATIONS_PER_OWNER` each (the oldest are removed)."""

from __future__ import annotations

import base64
import os
import time
import uuid
from dataclasses import dataclass

import numpy as np

from app.core.config import get_settings
from app.core.errors import NotFoundError
from app.ml.images import DecodedImage
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
    decoded: list[DecodedImage],
    pixels: np.ndarray,
    principal: Principal,
) -> list[ExplanationResult]:
    """Grad-CAM of each image for its top label (one forward and one backward pass each, two
    of each for a test-time-flip model), stored for the principal's owner."""
    from app.ml.explain import overlay_png

    grad_cam = classifier.grad_cam()
    results = []
    for image, resized in zip(decoded, pixels, strict=True):
        explanation = grad_cam.explain(resized[None])
        scores = explanation.probabilities
        if scores.shape[-1] == 1:  # one sigmoid unit: the probability of the second class
            scores = np.array([1.0 - scores[0], scores[0]])
        png = overlay_png(image.image, explanation.heatmap)
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
    """Keep the PNG, then drop the owner's oldest past the limit (names sort by age)."""
    store = get_storage().explanations
    store.put_bytes(_key(owner, result.id), result.png)
    kept = sorted(found.key for found in store.keys(f"{owner_key(owner)}/"))
    for old in kept[: max(len(kept) - get_settings().max_explanations_per_owner, 0)]:
        store.delete(old)


def explanation_png(explanation_id: uuid.UUID, *, principal: Principal) -> bytes:
    """The stored PNG of one of the owner's explanations; 404 for anyone else's (an admin
    key sees only its own owner's: explanations carry the images people sent)."""
    try:
        return get_storage().explanations.get_bytes(_key(principal.owner, explanation_id))
    except ObjectNotFoundError:
        raise NotFoundError(
            f"no explanation {explanation_id} (they are kept for a while only)"
        ) from None
