"""Which "none of the above" score tells a set's own photos from everything else, measured on
real photos before one is built into the service.

    .venv/bin/python -m benchmarks.outliers [--image-size 224]

For every set in ../shared/data: its images' pooled features from the frozen MobileNetV2 the
service uses (224 px), a head trained on its training features (the service's `train_head` with
its dense head, one of the heads `auto` chooses among; no mirrored copies), then, for its test
images (in-distribution) and
the test images of every other set (outliers), each candidate score (higher: more unusual):

- msp: 1 - the head's top probability (the baseline every classifier has);
- energy: -logsumexp of the head's logits (Liu et al., 2020);
- centroid: 1 - the cosine similarity of the L2-normalised feature to the nearest class mean;
- knn: 1 - the cosine similarity to the k-th nearest training feature (k = 5; Sun et al., 2022).

A threshold is chosen on the in-distribution validation images alone (the 95th percentile of
their scores: about 5 % of the set's own photos answered "unknown"), as the service would have
to. Reported per pair (trained on, outliers from): AUROC, the share of outliers rejected at
that threshold and the share of the set's own test photos rejected. Targets (issue 27): AUROC
>= 0.95, >= 80 % of outliers rejected, <= 5 % of own photos rejected. Writes the "outliers"
section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PROJECT_ROOT, SHARED, machine, write_section

DATA = SHARED / "data"
WEIGHTS = SHARED / "weights"
SPLITS = ("train", "validation", "test")
SCORES = ("msp", "energy", "centroid", "knn")
KNN_K = 5
VALIDATION_QUANTILE = 0.95
TARGETS = {"auroc": 0.95, "rejected": 0.80, "own_rejected": 0.05}


def set_names() -> list[str]:
    return sorted(p.name for p in DATA.iterdir() if (p / "train").is_dir())


def features_of(name: str, *, image_size: int, cache: Path) -> dict[str, Any]:
    """{split: (features, labels)} and the class names of one set, cached on disk."""
    path = cache / f"{name}-{image_size}.npz"
    classes = sorted(p.name for p in (DATA / name / "train").iterdir() if p.is_dir())
    if path.exists():
        stored = np.load(path)
        return {
            "classes": classes,
            **{split: (stored[f"{split}_x"], stored[f"{split}_y"]) for split in SPLITS},
        }
    import keras

    from app.ml import bases, builders
    from app.ml.data import resize_pixels
    from app.ml.images import decode_image, image_to_array

    spec = bases.BASES[bases.BaseName.MOBILENET_V2]
    weights = bases.find_weights(spec, weights_dir=WEIGHTS)
    assert weights is not None, f"no MobileNetV2 weights in {WEIGHTS}"
    base = builders.frozen_base(spec, image_size=image_size, weights=weights)
    extractor = builders.feature_extractor(base, spec, image_size=image_size, with_top_inputs=False)
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        files = [
            (path, index)
            for index, label in enumerate(classes)
            for path in sorted((DATA / name / split / label).iterdir())
        ]
        pixels = np.stack(
            [
                resize_pixels(
                    image_to_array(
                        decode_image(
                            path.read_bytes(), max_pixels=50_000_000, target_size=image_size
                        ).image
                    ),
                    image_size=image_size,
                )
                for path, _ in files
            ]
        )
        arrays[f"{split}_x"] = np.asarray(extractor.predict(pixels, batch_size=32, verbose=0))
        arrays[f"{split}_y"] = np.array([index for _, index in files], dtype=np.int32)
        keras.backend.clear_session(free_memory=False)
    np.savez(path, **arrays)
    return {
        "classes": classes,
        **{split: (arrays[f"{split}_x"], arrays[f"{split}_y"]) for split in SPLITS},
    }


def _normalised(x: np.ndarray) -> np.ndarray:
    result: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return result


class Scorer:
    """The candidate scores of one trained set."""

    def __init__(self, data: dict[str, Any], *, seed: int) -> None:
        from app.ml.config import HeadKind
        from app.ml.fitting import TrainingHooks
        from app.ml.heads import HeadData, HeadSpec, train_head

        train_x, train_y = data["train"]
        validation_x, validation_y = data["validation"]
        class_count = len(data["classes"])
        trial = train_head(
            HeadSpec(kind=HeadKind.DENSE, dropout=0.5),
            HeadData(
                train_x=train_x,
                train_y=train_y,
                validation=[validation_x],
                validation_y=validation_y,
            ),
            class_count=class_count,
            label_smoothing=0.1,
            epochs=60,
            learning_rate=3e-3,
            seed=seed,
            hooks=TrainingHooks(),
        )
        import keras

        head = trial.model
        self._logits = keras.Model(head.inputs, head.get_layer("predictions").input)
        self._dense = head.get_layer("predictions")
        self._head = head
        normalised = _normalised(train_x)
        self._train = normalised
        self._centroids = _normalised(
            np.stack([normalised[train_y == c].mean(axis=0) for c in range(class_count)])
        )

    def scores(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import keras

        hidden = keras.ops.convert_to_numpy(self._logits(x, training=False))
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in self._dense.weights)
        logits = hidden @ kernel + bias
        top = logits.max(axis=1, keepdims=True)
        log_sum_exp = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        probabilities = np.exp(logits - log_sum_exp[:, None])
        normalised = _normalised(x)
        similarity = normalised @ self._train.T
        kth = np.sort(similarity, axis=1)[:, -KNN_K]
        return {
            "msp": 1.0 - probabilities.max(axis=1),
            "energy": -log_sum_exp,
            "centroid": 1.0 - (normalised @ self._centroids.T).max(axis=1),
            "knn": 1.0 - kth,
        }


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """P(an outlier scores above an inlier), ties counted half (the Mann-Whitney form)."""
    combined = np.concatenate([inliers, outliers])
    order = combined.argsort(kind="mergesort")
    ranks = np.empty(len(combined))
    ranks[order] = np.arange(1, len(combined) + 1)
    for value in np.unique(combined):  # average ranks over ties
        tied = combined == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    outlier_ranks = ranks[len(inliers) :].sum()
    n_out, n_in = len(outliers), len(inliers)
    return float((outlier_ranks - n_out * (n_out + 1) / 2) / (n_out * n_in))


def run(*, image_size: int, seeds: list[int], cache: Path) -> list[dict[str, Any]]:
    names = set_names()
    data = {name: features_of(name, image_size=image_size, cache=cache) for name in names}
    rows = []
    for name in names:
        for seed in seeds:
            scorer = Scorer(data[name], seed=seed)
            validation = scorer.scores(data[name]["validation"][0])
            own = scorer.scores(data[name]["test"][0])
            for other in names:
                if other == name:
                    continue
                outliers = scorer.scores(data[other]["test"][0])
                for score in SCORES:
                    threshold = float(np.quantile(validation[score], VALIDATION_QUANTILE))
                    row = {
                        "trained_on": name,
                        "outliers": other,
                        "seed": seed,
                        "score": score,
                        "auroc": auroc(own[score], outliers[score]),
                        "rejected": float(np.mean(outliers[score] > threshold)),
                        "own_rejected": float(np.mean(own[score] > threshold)),
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def report(rows: list[dict[str, Any]], *, image_size: int, seeds: list[int]) -> str:
    def mean(values: list[float]) -> float:
        return statistics.mean(values)

    pairs = sorted({(r["trained_on"], r["outliers"]) for r in rows})
    lines = [
        '## "None of the above": which score tells a set\'s photos from others',
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, CPU only, with",
        f"`.venv/bin/python -m benchmarks.outliers --image-size {image_size} --seeds "
        f"{' '.join(map(str, seeds))}`:",
        f"MobileNetV2 features at {image_size} px and the service's dense head (msp and energy",
        "are that head's) trained on one set; its test photos against every other set's",
        "test photos as outliers; the threshold is the 95th percentile of the set's own",
        "validation scores. Means over the seeds (the head's seed; features are fixed). Cells:",
        "AUROC / outliers rejected / own test photos rejected.",
        "",
        "| trained on | outliers | " + " | ".join(SCORES) + " |",
        "| --- | --- | " + " | ".join("---" for _ in SCORES) + " |",
    ]
    for trained_on, outliers in pairs:
        cells = []
        for score in SCORES:
            picked = [
                r
                for r in rows
                if (r["trained_on"], r["outliers"], r["score"]) == (trained_on, outliers, score)
            ]
            cells.append(
                f"{mean([r['auroc'] for r in picked]):.3f} / "
                f"{mean([r['rejected'] for r in picked]):.0%} / "
                f"{mean([r['own_rejected'] for r in picked]):.0%}"
            )
        lines.append(f"| {trained_on} | {outliers} | " + " | ".join(cells) + " |")
    lines += ["", "Pairs meeting every target (AUROC >= 0.95, >= 80 % rejected, <= 5 % own):", ""]
    for score in SCORES:
        met = 0
        worst = 1.0
        for trained_on, outliers in pairs:
            picked = [
                r
                for r in rows
                if (r["trained_on"], r["outliers"], r["score"]) == (trained_on, outliers, score)
            ]
            value = mean([r["auroc"] for r in picked])
            worst = min(worst, value)
            met += int(
                value >= TARGETS["auroc"]
                and mean([r["rejected"] for r in picked]) >= TARGETS["rejected"]
                and mean([r["own_rejected"] for r in picked]) <= TARGETS["own_rejected"]
            )
        lines.append(f"- {score}: {met} of {len(pairs)} pairs; worst AUROC {worst:.3f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--cache",
        type=Path,
        default=PROJECT_ROOT / "var" / "benchmarks" / "outlier-features",
        help="where each set's features are kept between runs",
    )
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = run(image_size=args.image_size, seeds=args.seeds, cache=args.cache)
    body = report(rows, image_size=args.image_size, seeds=args.seeds)
    print(body)
    write_section("outliers", body)


if __name__ == "__main__":
    main()
