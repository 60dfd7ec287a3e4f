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

With negative examples (images of none of the classes, `_negative` in a dataset), the score
also weighs how much nearer an image is to them than to the classes: the larger of d / s_d and
(d / n) / s_r, where d and n are the distances to the k-th nearest training image of the
classes and of the negatives, and s_d, s_r their 90th percentiles on validation (so that
either can pass the threshold). The ratio alone catches images like the negatives that the
distance misses (a held-out flower class: 6 % turned away by the distance, 61 % with its
photos as negatives) but not images unlike both; the larger of the two keeps both
(docs/BENCHMARKS.md, "Negative examples"). The threshold rule is the same on that score.

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
# A loaded version holds its references in memory (float32): at most this many, 51 MB of
# 1280 features. A larger set is sampled evenly; its scores then compare with fewer images
# (a little higher, for the threshold and new images alike).
MAX_REFERENCE_IMAGES = 10_000
# Fewer negative examples than the neighbours compared, and they are not used.
MIN_NEGATIVES = NEIGHBOURS
# The validation percentile that scales the distance and the ratio to one another.
SCALE_QUANTILE = 0.90
# Queries are compared with the references this many at a time: a (chunk, references) matrix
# of similarities, not (queries, references).
_CHUNK = 512


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32): their dot products are cosine similarities."""
    rows = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    result: np.ndarray = rows / np.maximum(norms, 1e-12)
    return result


def knn_distances(queries: np.ndarray, references: np.ndarray, *, neighbours: int) -> np.ndarray:
    """1 - the cosine similarity of each (normalised) query to its `neighbours`-th most similar
    reference."""
    k = neighbours
    if len(references) < k:
        raise ValueError(f"{len(references)} references are fewer than {k} neighbours")
    distances = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), _CHUNK):
        similarity = queries[start : start + _CHUNK] @ references.T
        similarity.partition(-k, axis=1)  # in place: the k-th largest lands at -k
        distances[start : start + _CHUNK] = 1.0 - similarity[:, -k]
    return distances


def _as_stored(features: np.ndarray) -> np.ndarray:
    """Rounded as `save` stores them (float16), so the threshold is chosen on the features
    the served version compares with."""
    rounded: np.ndarray = features.astype(np.float16).astype(np.float32)
    return rounded


def _sampled(features: np.ndarray) -> np.ndarray:
    """At most MAX_REFERENCE_IMAGES rows, evenly spaced (the rows are in the manifest's
    order, class by class, so every class keeps its share)."""
    if len(features) <= MAX_REFERENCE_IMAGES:
        return features
    rows = np.linspace(0, len(features) - 1, MAX_REFERENCE_IMAGES).round().astype(int)
    sampled: np.ndarray = features[rows]
    return sampled


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


def _pair(values: np.ndarray) -> tuple[float, float]:
    first, second = (float(x) for x in values)
    return first, second


def _ratios(
    distances: np.ndarray, queries: np.ndarray, negatives: np.ndarray, neighbours: int
) -> np.ndarray:
    """`distances` over the distance to the k-th nearest negative (at least MIN_NEGATIVES of
    them), floored so that the ratio stays finite."""
    nearest = knn_distances(queries, negatives, neighbours=neighbours)
    ratios: np.ndarray = distances / np.maximum(nearest, 1e-6)
    return ratios


def _combined(distances: np.ndarray, ratios: np.ndarray, scales: tuple[float, float]) -> np.ndarray:
    """The score with negatives: the larger of the distance and the ratio, each scaled."""
    combined: np.ndarray = np.maximum(distances / scales[0], ratios / scales[1])
    return combined


@dataclass(frozen=True)
class OutlierIndex:
    """A version's training features and its "unknown" threshold."""

    references: np.ndarray  # (images, features), normalised
    threshold: float
    calibration_images: int  # the validation images it was chosen on
    neighbours: int = NEIGHBOURS
    # the share of the calibration images above the threshold, and whether the rule's promise
    # holds (False: too few images to be that sure; the threshold is their largest score)
    calibration_rejected: float = 0.0
    assured: bool = True
    # the training split's negative examples (normalised), and the scales of the distance and
    # of the ratio (None: no negatives, the score is the distance)
    negatives: np.ndarray | None = None
    scales: tuple[float, float] | None = None

    @classmethod
    def fit(
        cls,
        references: np.ndarray,
        *,
        calibration: np.ndarray | None,
        negatives: np.ndarray | None = None,
        neighbours: int = NEIGHBOURS,
    ) -> OutlierIndex | None:
        """The index of `references` (training features; at most MAX_REFERENCE_IMAGES of
        them, an even sample of larger sets) with a threshold from the `calibration` images'
        scores (held-out images like them); `negatives` (features of negative examples) join
        the score where there are enough of them. None with fewer than
        MIN_CALIBRATION_IMAGES calibration images: training images' own scores would run low
        (the model learned them), so they cannot stand in."""
        if calibration is None or len(calibration) < MIN_CALIBRATION_IMAGES:
            return None
        references = _as_stored(normalised(_sampled(references)))
        if len(references) <= neighbours:
            return None
        calibration = normalised(calibration)
        scores = knn_distances(calibration, references, neighbours=neighbours)
        unit_negatives, scales = None, None
        if negatives is not None and len(negatives) >= MIN_NEGATIVES:
            unit_negatives = _as_stored(normalised(_sampled(negatives)))
            ratios = _ratios(scores, calibration, unit_negatives, neighbours)
            scales = (
                max(float(np.quantile(scores, SCALE_QUANTILE)), 1e-6),
                max(float(np.quantile(ratios, SCALE_QUANTILE)), 1e-6),
            )
            scores = _combined(scores, ratios, scales)
        ordered = np.sort(scores)
        rank, assured = threshold_rank(
            len(ordered), rejection=TARGET_REJECTION, confidence=CONFIDENCE
        )
        threshold = float(ordered[rank - 1])
        return cls(
            references=references,
            threshold=threshold,
            calibration_images=len(ordered),
            neighbours=neighbours,
            calibration_rejected=float(np.mean(ordered > threshold)),
            assured=assured,
            negatives=unit_negatives,
            scales=scales,
        )

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Each image's outlier score: higher is more unlike the training images; above
        `threshold`, "unknown"."""
        unit = normalised(features)
        distances = knn_distances(unit, self.references, neighbours=self.neighbours)
        if self.negatives is None or self.scales is None:
            return distances
        ratios = _ratios(distances, unit, self.negatives, self.neighbours)
        return _combined(distances, ratios, self.scales)

    def turned_away(self, features: np.ndarray) -> float:
        """The share of these images that this index answers unknown."""
        return float(np.mean(self.scores(features) > self.threshold))

    def describe(self) -> dict[str, Any]:
        score = f"cosine distance to the {self.neighbours}th nearest training image"
        if self.negatives is not None:
            score = (
                f"the larger of that {score} and its ratio to the distance to the negative "
                "examples, each divided by its 90th percentile on validation"
            )
        return {
            "score": score,
            "negatives": 0 if self.negatives is None else len(self.negatives),
            "threshold": round(self.threshold, 6),
            "neighbours": self.neighbours,
            "reference_images": len(self.references),
            "calibrated_on": "validation",
            "calibration_images": self.calibration_images,
            "calibration_rejected": round(self.calibration_rejected, 4),
            "target_rejection": TARGET_REJECTION,
            "assured": self.assured,
        }

    def save(self, path: Path) -> None:
        # float16 halves the file (2000 x 1280 features: 5 MB) and moves a cosine similarity
        # by about 1e-3, far below the gaps the threshold separates
        arrays: dict[str, Any] = {
            "references": self.references.astype(np.float16),
            "threshold": np.float64(self.threshold),
            "neighbours": np.int64(self.neighbours),
        }
        if self.negatives is not None and self.scales is not None:
            arrays["negatives"] = self.negatives.astype(np.float16)
            arrays["scales"] = np.array(self.scales, dtype=np.float64)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path, *, described: dict[str, Any]) -> OutlierIndex:
        with np.load(path, allow_pickle=False) as stored:
            has_negatives = "negatives" in stored.files
            return cls(
                negatives=stored["negatives"].astype(np.float32) if has_negatives else None,
                scales=_pair(stored["scales"]) if has_negatives else None,
                references=stored["references"].astype(np.float32),
                threshold=float(stored["threshold"]),
                neighbours=int(stored["neighbours"]),
                calibration_images=int(described.get("calibration_images", 0)),
                calibration_rejected=float(described.get("calibration_rejected", 0.0)),
                assured=bool(described.get("assured", True)),
            )
