"""Labeling help, simulated on every shared set: do the suggestions reach random's accuracy
with fewer labels, and does label-issue detection find flipped labels?

Suggestions: each set's training split is the pool. A run starts from 5 labeled images per
class (drawn by the seed), then rounds of +5 per class picked by a strategy (the service's
rule, each strategy alone, or at random, the same seeds for all), training a head on the
labeled images' features each round and scoring it on the test split. `--head default` is
the default request's bottleneck head (linear at three L2 strengths and a dense head, chosen
on the validation split); `--head linear` the NumPy softmax regression the service ranks
with (fast, for exploring).

Label issues: 10 % of each set's training labels flipped to another class at random (per
seed); out-of-fold probabilities from the softmax regression; precision and recall of the
flagged images against the flipped ones.

Features: MobileNetV2's pooled features at 224 px (the default request's base and size),
cached on disk between runs.

    .venv/bin/python -m benchmarks.labeling [--seeds 1 2 3] [--head default|linear]
"""

from __future__ import annotations

import argparse
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.ml import labeling
from app.ml.labeling import Strategy
from benchmarks.common import PROJECT_ROOT, machine, write_section
from benchmarks.outliers import features_of, set_names

START_PER_CLASS = 5
STEP_PER_CLASS = 5
ROUNDS = 8
FLIPPED = 0.10
# What a strategy is compared by: the labels it needs to reach random's final accuracy.
SAVING_TARGET = 0.30
MOST_BELOW_RANDOM = 0.01
# Each head's results have their own section and plot.
SECTIONS = {"default": "labeling", "linear": "labeling-linear"}
STRATEGIES = ("service", Strategy.TYPICAL.value, Strategy.UNCERTAIN.value, Strategy.RANDOM.value)


class Head:
    """The head trained each round: `default` (the service's bottleneck head) or `linear`."""

    def __init__(self, kind: str, *, validation: tuple[np.ndarray, np.ndarray]) -> None:
        self.kind = kind
        self.validation = validation

    def accuracy(
        self,
        x: np.ndarray,
        y: np.ndarray,
        test: tuple[np.ndarray, np.ndarray],
        *,
        class_count: int,
        seed: int,
    ) -> float:
        test_x, test_y = test
        if self.kind == "linear":
            model = labeling.SoftmaxRegression.fit(x, y, class_count=class_count)
            return float((model.probabilities(test_x).argmax(axis=1) == test_y).mean())
        import keras

        from app.ml.config import HEAD_EPOCHS, HEAD_LEARNING_RATE, HeadKind
        from app.ml.fitting import TrainingHooks
        from app.ml.heads import HeadData, choose_head

        trial, _ = choose_head(
            HeadData(
                train_x=x,
                train_y=y,
                validation=[self.validation[0]],
                validation_y=self.validation[1],
            ),
            kind=HeadKind.AUTO,
            class_count=class_count,
            label_smoothing=0.1,
            dropout=0.5,
            epochs=HEAD_EPOCHS,
            learning_rate=HEAD_LEARNING_RATE,
            seed=seed,
            hooks=TrainingHooks(),
        )
        answers = np.asarray(trial.model.predict(test_x, batch_size=512, verbose=0))
        keras.backend.clear_session(free_memory=False)
        return float((answers.argmax(axis=1) == test_y).mean())


def initial_labels(labels: np.ndarray, *, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == label), size=per_class, replace=False)
        for label in np.unique(labels)
    ]
    return np.concatenate(picked)


def simulate(
    data: dict[str, Any], *, strategy: str, seed: int, head: Head
) -> list[tuple[int, float]]:
    """(labels, test accuracy) after the start and each round."""
    pool_x, pool_y = data["train"]
    class_count = len(data["classes"])
    labeled = initial_labels(pool_y, per_class=START_PER_CLASS, seed=seed)
    curve = []
    for round_number in range(ROUNDS + 1):
        accuracy = head.accuracy(
            pool_x[labeled],
            pool_y[labeled],
            data["test"],
            class_count=class_count,
            seed=seed,
        )
        curve.append((len(labeled), accuracy))
        if round_number == ROUNDS:
            break
        remaining = np.setdiff1d(np.arange(len(pool_y)), labeled)
        if not len(remaining):
            break
        picks = labeling.suggest(
            pool_x[labeled],
            pool_y[labeled],
            pool_x[remaining],
            class_count=class_count,
            count=STEP_PER_CLASS * class_count,
            seed=seed * 1000 + round_number,
            strategy=None if strategy == "service" else Strategy(strategy),
        )
        labeled = np.concatenate([labeled, remaining[[p.index for p in picks]]])
    return curve


def flipped_labels(
    labels: np.ndarray, *, class_count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), size=round(FLIPPED * len(labels)), replace=False)
    noisy = labels.copy()
    offsets = rng.integers(1, class_count, size=len(flipped))
    noisy[flipped] = (labels[flipped] + offsets) % class_count
    return noisy, flipped


def label_issue_run(data: dict[str, Any], *, seed: int) -> dict[str, float]:
    x, y = data["train"]
    class_count = len(data["classes"])
    noisy, flipped = flipped_labels(y, class_count=class_count, seed=seed)
    out_of_fold = labeling.out_of_fold_probabilities(x, noisy, class_count=class_count, seed=seed)
    flagged = {issue.index for issue in labeling.label_issues(out_of_fold.probabilities, noisy)}
    truth = set(flipped.tolist())
    found = len(flagged & truth)
    return {
        "flipped": len(truth),
        "flagged": len(flagged),
        "precision": found / len(flagged) if flagged else 0.0,
        "recall": found / len(truth),
        "l2": out_of_fold.l2,
    }


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float, float]]:
    """(labels, mean accuracy, spread) per round over seeds."""
    rounds = min(len(c) for c in curves)
    out = []
    for index in range(rounds):
        values = [c[index][1] for c in curves]
        out.append(
            (
                curves[0][index][0],
                statistics.mean(values),
                statistics.stdev(values) if len(values) > 1 else 0.0,
            )
        )
    return out


def labels_to_reach(curve: list[tuple[int, float, float]], target: float) -> float | None:
    """The labels at which `curve` first reaches `target` (linear between rounds)."""
    for (n0, a0, _), (n1, a1, _) in zip([(0, -1.0, 0.0), *curve], curve, strict=False):
        if a1 >= target - 1e-9:
            if a0 < 0 or a1 == a0:
                return float(n1)
            return n0 + (n1 - n0) * (target - a0) / (a1 - a0)
    return None


def run(
    *, seeds: list[int], head_kind: str, cache: Path, sets: list[str], strategies: list[str]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in sets:
        data = features_of(name, image_size=224, cache=cache)
        head = Head(head_kind, validation=data["validation"])
        curves = {
            strategy: mean_curve(
                [simulate(data, strategy=strategy, seed=seed, head=head) for seed in seeds]
            )
            for strategy in strategies
        }
        issues = [label_issue_run(data, seed=seed) for seed in seeds]
        results[name] = {"curves": curves, "issues": issues, "classes": len(data["classes"])}
        print(name, {s: [round(a, 3) for _, a, _ in c] for s, c in curves.items()}, flush=True)
        print(name, issues, flush=True)
    return results


def plot_path(head_kind: str) -> Path:
    return PROJECT_ROOT / "docs" / f"{SECTIONS[head_kind]}-curves.png"


def plot(results: dict[str, Any], *, head_kind: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for axis, (name, result) in zip(axes[0], results.items(), strict=True):
        for strategy, curve in result["curves"].items():
            counts = [n for n, _, _ in curve]
            means = np.array([a for _, a, _ in curve])
            spreads = np.array([s for _, _, s in curve])
            axis.plot(counts, means, marker="o", markersize=3, label=strategy)
            axis.fill_between(counts, means - spreads, means + spreads, alpha=0.15)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("labeled images")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(plot_path(head_kind), dpi=110)


def report(results: dict[str, Any], *, seeds: list[int], head_kind: str, command: str) -> str:
    head_text = {
        "default": "the default request's bottleneck head (linear at three L2 strengths and "
        "a dense head, chosen on the validation split)",
        "linear": "the softmax regression the service ranks with",
    }[head_kind]
    title = {
        "default": "suggestions against random with the default head, and flipped labels found",
        "linear": "each strategy against random with the ranking's own model",
    }[head_kind]
    lines = [
        f"## Labeling help: {title}",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, with `{command}`. "
        f"Seeds {', '.join(map(str, seeds))}; MobileNetV2 features at 224 px.",
        "",
        f"Suggestions: from {START_PER_CLASS} labeled training images per class, {ROUNDS} rounds "
        f"of +{STEP_PER_CLASS} per class picked by each strategy from the rest of the training "
        f"split; each round {head_text}, scored on the test split. `service` is the rule "
        f"`GET /datasets/{{id}}/suggestions` applies (typical and diverse while the smallest "
        f"class has fewer than {labeling.COLD_START_PER_CLASS} labels, then uncertain and "
        "diverse). Mean test accuracy over seeds at each round (labels in brackets):",
        "",
    ]
    for name, result in results.items():
        curves = result["curves"]
        counts = [n for n, _, _ in curves["random"]]
        lines.append(f"**{name}**")
        lines.append("")
        lines.append("| strategy | " + " | ".join(str(n) for n in counts) + " |")
        lines.append("| --- | " + " | ".join("---" for _ in counts) + " |")
        for strategy, curve in curves.items():
            lines.append(
                f"| {strategy} | " + " | ".join(f"{a:.3f} ±{s:.3f}" for _, a, s in curve) + " |"
            )
        lines.append("")
    lines += [
        f"Labels each strategy needs to reach random's final mean accuracy (saving against "
        f"random's count; target >= {SAVING_TARGET:.0%} on two sets), and its worst round "
        f"against random (target: never more than {MOST_BELOW_RANDOM * 100:.0f} point below):",
        "",
        "| set | strategy | labels to reach random's final | saving | worst round vs random |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, result in results.items():
        curves = result["curves"]
        random_curve = curves["random"]
        final_count, final_accuracy, _ = random_curve[-1]
        for strategy, curve in curves.items():
            if strategy == "random":
                continue
            needed = labels_to_reach(curve, final_accuracy)
            saving = "-" if needed is None else f"{1 - needed / final_count:.0%}"
            worst = min(a - r for (_, a, _), (_, r, _) in zip(curve, random_curve, strict=True))
            lines.append(
                f"| {name} | {strategy} | "
                f"{'not reached' if needed is None else f'{needed:.0f} of {final_count}'} | "
                f"{saving} | {worst * 100:+.1f} pt |"
            )
    lines += [
        "",
        f"![learning curves of each strategy]({plot_path(head_kind).name})",
        "",
        f"Label issues: {FLIPPED:.0%} of each set's training labels flipped to another class "
        f"at random; {labeling.FOLDS}-fold out-of-fold probabilities from the softmax "
        "regression; confident learning flags the images (`GET /datasets/{id}/label-issues`). "
        "Target: precision and recall >= 0.6 on every set.",
        "",
        "| set | training images | flipped | flagged | precision | recall |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, result in results.items():
        issues = result["issues"]
        precision = [i["precision"] for i in issues]
        recall = [i["recall"] for i in issues]
        lines.append(
            f"| {name} | {round(issues[0]['flipped'] / FLIPPED)} | {issues[0]['flipped']} | "
            f"{statistics.mean(i['flagged'] for i in issues):.0f} | "
            f"{statistics.mean(precision):.2f} ({min(precision):.2f}-{max(precision):.2f}) | "
            f"{statistics.mean(recall):.2f} ({min(recall):.2f}-{max(recall):.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--head", choices=("default", "linear"), default="default")
    parser.add_argument("--sets", nargs="+", default=None, help="default: every shared set")
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=STRATEGIES,
        default=list(STRATEGIES),
        help="default: the service's rule, each strategy alone, and random",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=PROJECT_ROOT / "var" / "benchmarks" / "outlier-features",
        help="where each set's features are kept between runs",
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    sets = args.sets or set_names()
    if "random" not in args.strategies:
        parser.error("random is what every strategy is measured against: keep it")
    results = run(
        seeds=args.seeds,
        head_kind=args.head,
        cache=args.cache,
        sets=sets,
        strategies=args.strategies,
    )
    command = "python -m benchmarks.labeling " + " ".join(
        [
            f"--seeds {' '.join(map(str, args.seeds))}",
            f"--head {args.head}",
            f"--strategies {' '.join(args.strategies)}",
        ]
    )
    body = report(results, seeds=args.seeds, head_kind=args.head, command=command)
    print(body)
    if not args.no_write:
        plot(results, head_kind=args.head)
        write_section(SECTIONS[args.head], body)


if __name__ == "__main__":
    main()
