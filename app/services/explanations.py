"""Grad-CAM explanations of predictions: computed on request (`explain=true`), kept as PNG
files per owner so that `GET /explanations/{id}.png` can show them, at most
`MAX_EXPLANATIONS_PER_OWNER` each (the oldest are removed)."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.config import get_settings
from app.core.errors import NotFoundError
from app.ml.images import DecodedImage
from app.ml.serving import LoadedClassifier
from app.services.auth import Principal


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


def _owner_folder(owner: str) -> Path:
    # The owner's name is not a path: a digest keeps it out of the file system's grammar.
    digest = hashlib.sha256(f"owner:{owner}".encode()).hexdigest()[:32]
    return get_settings().data_dir / "explanations" / digest


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
            id=uuid.uuid4(),
            label=classifier.classes[explanation.class_index],
            probability=float(scores[explanation.class_index]),
            png=png,
        )
        _store(principal.owner, result)
        results.append(result)
    return results


def _store(owner: str, result: ExplanationResult) -> None:
    folder = _owner_folder(owner)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{result.id}.partial"
    partial.write_bytes(result.png)
    os.replace(partial, folder / f"{result.id}.png")
    kept = sorted(folder.glob("*.png"), key=lambda path: path.stat().st_mtime_ns)
    for old in kept[: max(len(kept) - get_settings().max_explanations_per_owner, 0)]:
        old.unlink(missing_ok=True)


def explanation_png(explanation_id: uuid.UUID, *, principal: Principal) -> Path:
    """The stored PNG of one of the owner's explanations; 404 for anyone else's (an admin
    key sees only its own owner's: explanations carry the images people sent)."""
    path = _owner_folder(principal.owner) / f"{explanation_id}.png"
    if not path.is_file():
        raise NotFoundError(f"no explanation {explanation_id} (they are kept for a while only)")
    return path
