""" "None of the above" for multiclass models: how unlike every training image an image is.

The score is the cosine distance from an image's features (the input of the model's head: the
base's pooled features, or a scratch model's pooled activations) to its k-th nearest training
image's (k = 5; Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", 2022).
Measured on real photos against the head's top probability, an energy score and the distance
to class centroids, it is the one that tells every shared set's photos from the others'
(docs/BENCHMARKS.md, "None of the above").

The threshold is chosen so that, with 90 % confidence over the draw of the calibration images,
at most 5 % of new images like the training images are answered "unknown": the order statistic
of the calibration scores whose coverage (a Beta variable) falls short of 95 % with
probability at most 10 % (a training-conditional conformal bound). A plain 95th percentile of
120 validation photos rejected 8 % of caltech101_8class's own test photos; this rule takes
about the 98th percentile of 120 images and the largest score of fewer than 45 (then the
promise is weaker, and `describe()` says so).

Pure NumPy: no Keras, no web or database imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OUTLIER_FILE = "outliers.npz"
NEIGHBOURS = 5
# The share of images like the training images that may be answered "unknown", and how sure
# the threshold's choice must be of keeping to it.
TARGET_REJECTION = 0.05
CONFIDENCE = 0.90
# Fewer calibration images than this, and no threshold is chosen (the version has no
# "unknown" answer).
MIN_CALIBRATION_IMAGES = 20
# Queries are compared with the references this many at a time: a (chunk, references) matrix
# of similarities, not (queries, references).
_CHUNK = 512


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32): their dot products are cosine similarities."""
    rows = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    result: np.ndarray = rows / np.maximum(norms, 1e-12)
    return result


def knn_distances(
    queries: np.ndarray, references: np.ndarray, *, neighbours: int, leave_one_out: bool = False
) -> np.ndarray:
    """1 - the cosine similarity of each (normalised) query to its `neighbours`-th most similar
    reference; with `leave_one_out` the queries ARE the references and each skips itself."""
    k = neighbours + (1 if leave_one_out else 0)
    if len(references) < k:
        raise ValueError(f"{len(references)} references are fewer than {k} neighbours")
    distances = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), _CHUNK):
        similarity = queries[start : start + _CHUNK] @ references.T
        # the k-th largest similarity of each row (itself, at ~1.0, is the first when leaving
        # one out)
        kth = np.partition(similarity, -k, axis=1)[:, -k]
        distances[start : start + _CHUNK] = 1.0 - kth
    return distances


def _binomial_tails(n: int, p: float) -> np.ndarray:
    """tails[j] = P(Binomial(n, p) >= j) for j = 0..n (and tails[n + 1] = 0)."""
    successes = np.arange(n + 1)
    log_pmf = (
        math.lgamma(n + 1)
        - np.array([math.lgamma(k + 1) + math.lgamma(n - k + 1) for k in successes])
        + successes * math.log(p)
        + (n - successes) * math.log1p(-p)
    )
    tails = np.zeros(n + 2)
    tails[: n + 1] = np.cumsum(np.exp(log_pmf)[::-1])[::-1]
    return np.minimum(tails, 1.0)


def threshold_rank(n: int, *, rejection: float, confidence: float) -> tuple[int, bool]:
    """The 1-based rank of the sorted calibration scores to use as the threshold: the smallest
    j whose coverage, Beta(j, n + 1 - j), is below 1 - `rejection` with probability at most
    1 - `confidence`, i.e. P(Binomial(n, 1 - rejection) >= j) <= 1 - confidence; and whether
    such a rank exists. (n, False) when none is that sure (few images): the largest score."""
    tails = _binomial_tails(n, 1.0 - rejection)
    sure = np.flatnonzero(tails[1 : n + 1] <= 1.0 - confidence)
    if not len(sure):
        return n, False
    return int(sure[0]) + 1, True


@dataclass(frozen=True)
class OutlierIndex:
    """A version's training features and its "unknown" threshold."""

    references: np.ndarray  # (images, features), normalised
    threshold: float
    calibration_images: int
    calibrated_on: str  # "validation", or "leave-one-out" when validation was trained on
    neighbours: int = NEIGHBOURS
    # the share of the calibration images above the threshold, and whether the rule's promise
    # holds (False: too few images to be that sure; the threshold is their largest score)
    calibration_rejected: float = 0.0
    assured: bool = True

    @classmethod
    def fit(
        cls,
        references: np.ndarray,
        *,
        calibration: np.ndarray | None,
        neighbours: int = NEIGHBOURS,
    ) -> OutlierIndex | None:
        """The index of `references` (training features) with a threshold from the
        `calibration` images' scores (held-out images like them), or, with no calibration
        images, from the references' leave-one-out scores. None when there are too few images
        for either."""
        references = normalised(references)
        if len(references) <= neighbours:
            return None
        if calibration is not None and len(calibration):
            scores = knn_distances(normalised(calibration), references, neighbours=neighbours)
            calibrated_on = "validation"
        else:
            scores = knn_distances(
                references, references, neighbours=neighbours, leave_one_out=True
            )
            calibrated_on = "leave-one-out"
        if len(scores) < MIN_CALIBRATION_IMAGES:
            return None
        ordered = np.sort(scores)
        rank, assured = threshold_rank(
            len(ordered), rejection=TARGET_REJECTION, confidence=CONFIDENCE
        )
        threshold = float(ordered[rank - 1])
        return cls(
            references=references,
            threshold=threshold,
            calibration_images=len(ordered),
            calibrated_on=calibrated_on,
            neighbours=neighbours,
            calibration_rejected=float(np.mean(ordered > threshold)),
            assured=assured,
        )

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Each image's outlier score: higher is more unlike the training images; above
        `threshold`, "unknown"."""
        return knn_distances(normalised(features), self.references, neighbours=self.neighbours)

    def describe(self) -> dict[str, Any]:
        return {
            "score": f"cosine distance to the {self.neighbours}th nearest training image",
            "threshold": round(self.threshold, 6),
            "neighbours": self.neighbours,
            "reference_images": len(self.references),
            "calibrated_on": self.calibrated_on,
            "calibration_images": self.calibration_images,
            "calibration_rejected": round(self.calibration_rejected, 4),
            "target_rejection": TARGET_REJECTION,
            "assured": self.assured,
        }

    def save(self, path: Path) -> None:
        # float16 halves the file (2000 x 1280 features: 5 MB) and moves a cosine similarity
        # by about 1e-3, far below the gaps the threshold separates
        np.savez(
            path,
            references=self.references.astype(np.float16),
            threshold=np.float64(self.threshold),
            neighbours=np.int64(self.neighbours),
        )

    @classmethod
    def load(cls, path: Path, *, described: dict[str, Any]) -> OutlierIndex:
        with np.load(path, allow_pickle=False) as stored:
            return cls(
                references=stored["references"].astype(np.float32),
                threshold=float(stored["threshold"]),
                neighbours=int(stored["neighbours"]),
                calibration_images=int(described.get("calibration_images", 0)),
                calibrated_on=str(described.get("calibrated_on", "")),
                calibration_rejected=float(described.get("calibration_rejected", 0.0)),
                assured=bool(described.get("assured", True)),
            )
