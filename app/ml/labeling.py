"""Where labeling time goes furthest, from a frozen base's pooled features: which unlabeled
images to label next, and which given labels look wrong.

NumPy only (no Keras): the API ranks from stored features without loading a model.

- `SoftmaxRegression`: an L2-regularised multinomial logistic regression on standardised
  features, fitted by accelerated gradient descent; the cheap model both need.
- `out_of_fold_probabilities`: each labeled image's probabilities from a model that did not
  see it (stratified k-fold), what confident learning needs.
- `label_issues`: confident learning (Northcutt et al., 2021): per-class thresholds at the
  mean self-confidence, an image flagged where another class is confidently predicted.
- `suggest`: with few labels per class, typical images of uncovered clusters (TypiClust,
  Hacohen et al., 2022); later, the least certain images spread over clusters (margin with
  diversity), both measured against random in benchmarks/labeling.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

# Below this many labeled images in its smallest class, a set is in the cold start: a model
# fitted on so few is not yet worth asking where it is unsure (benchmarks/labeling.py).
COLD_START_PER_CLASS = 10
DEFAULT_L2 = 1e-2
# Strengths the out-of-fold models are chosen among, by their out-of-fold log loss.
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
FOLDS = 5
# Dimensions the features are projected to before clustering (PCA): k-means and the
# neighbour counts stay fast and the distances less noisy.
CLUSTER_DIMENSIONS = 32
TYPICALITY_NEIGHBOURS = 20
KMEANS_RESTARTS = 4
# Bounds on one ranking's cost (it runs in an API request): images clustered, clusters,
# neighbours typicality is measured against, rows of distances at once.
MAX_CLUSTERED_IMAGES = 4000
MAX_CLUSTERS = 400
MAX_TYPICALITY_REFERENCES = 1000
TYPICALITY_CHUNK = 512
# Margin with diversity: the least certain UNCERTAIN_POOL x count images are clustered into
# `count` groups and the least certain of each group is picked.
UNCERTAIN_POOL = 4


def standardisation(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = reference.mean(axis=0)
    scale = reference.std(axis=0)
    return mean, np.where(scale > 1e-6, scale, 1.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return np.asarray(exponentials / exponentials.sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class OutOfFold:
    probabilities: np.ndarray  # (images, classes)
    l2: float  # the strength chosen
    log_loss: float  # of the given labels under the chosen strength's answers
    folds: int


@dataclass(frozen=True)
class SoftmaxRegression:
    """Multinomial logistic regression on standardised features (L2 on the mean loss)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (features, classes)
    bias: np.ndarray  # (classes,)

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        class_count: int,
        l2: float = DEFAULT_L2,
        iterations: int = 300,
    ) -> SoftmaxRegression:
        """Nesterov-accelerated gradient descent with the step of the loss's curvature bound
        (half the largest eigenvalue of the features' second moment, plus l2): no step size
        to tune, and class-balanced weights so that a class with fewer labels counts as much."""
        mean, scale = standardisation(features)
        x = ((features - mean) / scale).astype(np.float64)
        n, dimensions = x.shape
        targets = np.zeros((n, class_count))
        targets[np.arange(n), labels] = 1.0
        counts = np.bincount(labels, minlength=class_count).astype(np.float64)
        present = counts > 0
        sample_weights = np.where(
            present[labels], n / (present.sum() * np.maximum(counts[labels], 1)), 0.0
        )
        curvature = 0.5 * _largest_eigenvalue(x) * sample_weights.max() + 1.0 + l2
        step = 1.0 / curvature
        weights = np.zeros((dimensions, class_count))
        bias = np.zeros(class_count)
        previous = (weights, bias)
        momentum_weights, momentum_bias = weights, bias
        for iteration in range(1, iterations + 1):
            probabilities = softmax(x @ momentum_weights + momentum_bias)
            residual = (probabilities - targets) * sample_weights[:, None] / n
            gradient_weights = x.T @ residual + l2 * momentum_weights
            gradient_bias = residual.sum(axis=0)
            weights = momentum_weights - step * gradient_weights
            bias = momentum_bias - step * gradient_bias
            factor = (iteration - 1) / (iteration + 2)
            momentum_weights = weights + factor * (weights - previous[0])
            momentum_bias = bias + factor * (bias - previous[1])
            previous = (weights, bias)
        return cls(mean=mean, scale=scale, weights=weights, bias=bias)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        x = (features - self.mean) / self.scale
        return softmax(x @ self.weights + self.bias)


def _largest_eigenvalue(x: np.ndarray, *, rounds: int = 30) -> float:
    """The largest eigenvalue of x.T @ x / n, by power iteration (x: n x d)."""
    vector: np.ndarray = np.random.default_rng(0).standard_normal((int(x.shape[1]),))
    value = 0.0
    for _ in range(rounds):
        product = x.T @ (x @ vector) / len(x)
        value = float(np.linalg.norm(product))
        if value == 0.0:
            return 0.0
        vector = np.asarray(product / value)
    return value


def stratified_folds(labels: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """Each image's fold (0..folds-1), every class dealt round-robin over the folds."""
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return assignment


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    class_count: int,
    folds: int = FOLDS,
    seed: int = 0,
    l2_grid: tuple[float, ...] = L2_GRID,
) -> OutOfFold:
    """Each image's class probabilities from models fitted on the other folds, at the L2
    strength of `l2_grid` whose out-of-fold answers have the lowest log loss on the labels
    given (chosen by the data, not by us: the labels may be noisy, the folds say how far a
    model should trust them)."""
    folds = max(2, min(folds, int(np.bincount(labels).max())))
    assignment = stratified_folds(labels, folds=folds, seed=seed)
    best: OutOfFold | None = None
    for l2 in l2_grid:
        probabilities = np.zeros((len(labels), class_count))
        for fold in range(folds):
            held_out = assignment == fold
            if not held_out.any():
                continue
            model = SoftmaxRegression.fit(
                features[~held_out], labels[~held_out], class_count=class_count, l2=l2
            )
            probabilities[held_out] = model.probabilities(features[held_out])
        picked = probabilities[np.arange(len(labels)), labels]
        loss = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))
        if best is None or loss < best.log_loss:
            best = OutOfFold(probabilities=probabilities, l2=l2, log_loss=loss, folds=folds)
    assert best is not None
    return best


@dataclass(frozen=True)
class LabelIssue:
    index: int  # into the images checked
    given: int
    suggested: int
    # The probability of the given label (lower: more likely wrong), what issues are ranked by.
    self_confidence: float


def label_issues(probabilities: np.ndarray, labels: np.ndarray) -> list[LabelIssue]:
    """Images whose given label is likely wrong, most likely first. Confident learning: a
    class's threshold is the mean probability of that class over the images given it; an
    image is confidently of class j where its probability of j reaches j's threshold (the
    likeliest such class where several do). It is an issue where that class is another one
    than its given label, and the model's top answer agrees with it."""
    class_count = probabilities.shape[1]
    thresholds = np.array(
        [
            probabilities[labels == label, label].mean() if (labels == label).any() else 1.0
            for label in range(class_count)
        ]
    )
    confident = probabilities >= thresholds[None, :] - 1e-12
    candidates = np.where(confident, probabilities, -1.0)
    confident_class = candidates.argmax(axis=1)
    has_confident = confident.any(axis=1)
    top = probabilities.argmax(axis=1)
    flagged = has_confident & (confident_class != labels) & (top == confident_class)
    issues = [
        LabelIssue(
            index=int(index),
            given=int(labels[index]),
            suggested=int(confident_class[index]),
            self_confidence=float(probabilities[index, labels[index]]),
        )
        for index in np.flatnonzero(flagged)
    ]
    return sorted(issues, key=lambda issue: issue.self_confidence)


class Strategy(enum.StrEnum):
    TYPICAL = "typical_diverse"  # cold start: the most typical image of each uncovered cluster
    UNCERTAIN = "uncertain_diverse"  # the least certain images, one per cluster
    RANDOM = "random"  # the baseline every strategy is measured against


@dataclass(frozen=True)
class Suggestion:
    index: int  # into the unlabeled images
    strategy: Strategy
    # typicality (cold start) or the margin between the two likeliest classes (uncertain)
    score: float
    cluster: int


def projected(features: np.ndarray, *, dimensions: int = CLUSTER_DIMENSIONS) -> np.ndarray:
    """The features on their first principal components, L2-normalised per image."""
    centred = features - features.mean(axis=0)
    dimensions = min(dimensions, *centred.shape)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ components[:dimensions].T
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    return np.asarray(reduced / np.maximum(norms, 1e-12))


def kmeans(
    points: np.ndarray, *, clusters: int, seed: int, restarts: int = KMEANS_RESTARTS
) -> np.ndarray:
    """Each point's cluster: the tightest (least within-cluster squared distance) of
    `restarts` runs of k-means++ seeding and Lloyd's rounds (one run can merge two groups
    and split another)."""
    clusters = max(1, min(clusters, len(points)))
    best: tuple[float, np.ndarray] | None = None
    for restart in range(restarts):
        rng = np.random.default_rng([seed, restart])
        assignment, inertia = _lloyd(points, _plus_plus(points, clusters, rng))
        if best is None or inertia < best[0]:
            best = (inertia, assignment)
    assert best is not None
    return best[1]


def _plus_plus(points: np.ndarray, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability by squared distance."""
    centres = [points[rng.integers(len(points))]]
    nearest = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, clusters):
        total = nearest.sum()
        pick = (
            rng.choice(len(points), p=nearest / total) if total > 0 else rng.integers(len(points))
        )
        centres.append(points[pick])
        nearest = np.minimum(nearest, ((points - points[pick]) ** 2).sum(axis=1))
    return np.stack(centres)


def _lloyd(points: np.ndarray, centres: np.ndarray, rounds: int = 25) -> tuple[np.ndarray, float]:
    assignment = np.full(len(points), -1, dtype=np.int64)
    for _ in range(rounds):
        new_assignment = _squared_distances(points, centres).argmin(axis=1)
        if np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums = np.zeros_like(centres)
        np.add.at(sums, assignment, points)
        sizes = np.bincount(assignment, minlength=len(centres))
        filled = sizes > 0
        centres[filled] = sums[filled] / sizes[filled, None]
    inertia = float(_squared_distances(points, centres)[np.arange(len(points)), assignment].sum())
    return assignment, inertia


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a**2).sum(axis=1)[:, None] - 2 * a @ b.T + (b**2).sum(axis=1)[None, :]
    return np.asarray(np.maximum(squared, 0.0))


def typicality(
    points: np.ndarray,
    *,
    neighbours: int = TYPICALITY_NEIGHBOURS,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """1 / the mean distance of each point to its nearest neighbours among `points` (among
    a sample of MAX_TYPICALITY_REFERENCES of them where there are more: the memory stays
    points x references), computed in chunks of rows."""
    if len(points) < 2:
        return np.ones(len(points))
    if len(points) > MAX_TYPICALITY_REFERENCES:
        rng = rng or np.random.default_rng(0)
        references = np.sort(rng.choice(len(points), MAX_TYPICALITY_REFERENCES, replace=False))
    else:
        references = np.arange(len(points))
    k = min(neighbours, len(references) - 1)
    scores = np.empty(len(points))
    for start in range(0, len(points), TYPICALITY_CHUNK):
        rows = np.arange(start, min(start + TYPICALITY_CHUNK, len(points)))
        distances = np.sqrt(_squared_distances(points[rows], points[references]))
        distances[rows[:, None] == references[None, :]] = np.inf  # not its own neighbour
        nearest = np.partition(distances, k - 1, axis=1)[:, :k]
        scores[rows] = 1.0 / (nearest.mean(axis=1) + 1e-12)
    return scores


def _sample(count: int, most: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `most` of `count` items (all of them, in order, if there are few)."""
    if count <= most:
        return np.arange(count)
    return np.sort(rng.choice(count, most, replace=False))


def typical_and_diverse(
    labeled: np.ndarray, unlabeled: np.ndarray, *, count: int, seed: int
) -> list[Suggestion]:
    """TypiClust: cluster the images (labeled and not) into as many clusters as there will
    be labels after this round (at most MAX_CLUSTERS); from the largest clusters that hold no
    labeled image yet, the most typical unlabeled image of each. A large set is clustered
    on a seeded sample of MAX_CLUSTERED_IMAGES of its images (a quarter of them labeled at
    most), which bounds the time and memory of a request."""
    rng = np.random.default_rng(seed)
    kept_labeled = _sample(len(labeled), MAX_CLUSTERED_IMAGES // 4, rng)
    kept = _sample(len(unlabeled), MAX_CLUSTERED_IMAGES - len(kept_labeled), rng)
    points = projected(np.concatenate([labeled[kept_labeled], unlabeled[kept]]))
    labeled_count = len(kept_labeled)
    clusters = min(labeled_count + count, MAX_CLUSTERS)
    assignment = kmeans(points, clusters=clusters, seed=seed)
    covered = set(assignment[:labeled_count].tolist())
    unlabeled_clusters = assignment[labeled_count:]
    sizes = np.bincount(assignment)
    order = sorted(
        set(unlabeled_clusters.tolist()),
        key=lambda cluster: (cluster in covered, -sizes[cluster], cluster),
    )
    picked: list[Suggestion] = []
    for cluster in order[:count]:
        members = np.flatnonzero(assignment == cluster)
        scores = typicality(points[members], rng=rng)
        candidates = [
            (score, member - labeled_count)
            for score, member in zip(scores, members, strict=True)
            if member >= labeled_count
        ]
        score, index = max(candidates)
        picked.append(
            Suggestion(
                index=int(kept[index]),
                strategy=Strategy.TYPICAL,
                score=float(score),
                cluster=cluster,
            )
        )
    if len(picked) < count:  # fewer clusters than asked: the next most typical images
        taken = {s.index for s in picked}
        scores = typicality(points, rng=rng)[labeled_count:]
        for index in np.argsort(-scores):
            if len(picked) == count:
                break
            if int(kept[index]) not in taken:
                cluster = int(unlabeled_clusters[index])
                picked.append(
                    Suggestion(int(kept[index]), Strategy.TYPICAL, float(scores[index]), cluster)
                )
    return picked


def margins(probabilities: np.ndarray) -> np.ndarray:
    """The gap between each image's two likeliest classes (small: unsure)."""
    ordered = np.sort(probabilities, axis=1)
    return np.asarray(ordered[:, -1] - ordered[:, -2])


def uncertain_and_diverse(
    probabilities: np.ndarray, unlabeled: np.ndarray, *, count: int, seed: int
) -> list[Suggestion]:
    """The least certain images (smallest margin) of the UNCERTAIN_POOL x count least
    certain, one from each of `count` clusters of them: unsure, and not all alike."""
    gap = margins(probabilities)
    pool = np.argsort(gap, kind="stable")[: max(count, UNCERTAIN_POOL * count)]
    points = projected(unlabeled[pool]) if len(pool) > count else np.zeros((len(pool), 1))
    assignment = (
        kmeans(points, clusters=count, seed=seed) if len(pool) > count else np.arange(len(pool))
    )
    picked: list[Suggestion] = []
    for cluster in np.unique(assignment):
        members = pool[assignment == cluster]
        best = members[np.argmin(gap[members])]
        picked.append(Suggestion(int(best), Strategy.UNCERTAIN, float(gap[best]), int(cluster)))
    return sorted(picked, key=lambda s: s.score)[:count]


def random_picks(unlabeled_count: int, *, count: int, seed: int) -> list[Suggestion]:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(unlabeled_count, size=min(count, unlabeled_count), replace=False)
    return [Suggestion(int(i), Strategy.RANDOM, 0.0, -1) for i in chosen]


def cold_start(labels: np.ndarray, class_count: int) -> bool:
    """Whether the smallest class has fewer than COLD_START_PER_CLASS labeled images."""
    return int(np.bincount(labels, minlength=class_count).min()) < COLD_START_PER_CLASS


def suggest(
    labeled: np.ndarray,
    labels: np.ndarray,
    unlabeled: np.ndarray,
    *,
    class_count: int,
    count: int,
    seed: int = 0,
    probabilities: np.ndarray | None = None,
    strategy: Strategy | None = None,
) -> list[Suggestion]:
    """`count` unlabeled images to label next (indices into `unlabeled`), by `strategy` or
    by the rule: typical and diverse in the cold start, then uncertain and diverse, with
    `probabilities` of the unlabeled images (a softmax regression on the labeled ones'
    features where none are given)."""
    count = min(count, len(unlabeled))
    if count <= 0:
        return []
    if strategy is None:
        strategy = Strategy.TYPICAL if cold_start(labels, class_count) else Strategy.UNCERTAIN
    if strategy is Strategy.RANDOM:
        return random_picks(len(unlabeled), count=count, seed=seed)
    if strategy is Strategy.TYPICAL:
        return typical_and_diverse(labeled, unlabeled, count=count, seed=seed)
    if probabilities is None:
        model = SoftmaxRegression.fit(labeled, labels, class_count=class_count)
        probabilities = model.probabilities(unlabeled)
    return uncertain_and_diverse(probabilities, unlabeled, count=count, seed=seed)
