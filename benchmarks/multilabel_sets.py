"""Multi-label image sets made from ../shared/data: each image is a side-by-side pair of photos
from two different sets, labelled with both photos' classes (a quarter of the images hold one
photo beside a grey tile, and have its label only).

    .venv/bin/python -m benchmarks.multilabel_sets OUT_DIR [--seed 0]

writes OUT_DIR/<name>/images/*.jpg and OUT_DIR/<name>/labels.csv (path,labels,split): what a
user of a multi-label service uploads. Training and validation images are made from the
photos of the sources' own train and validation splits, test images from their test splits,
so no photo is seen in two splits.
"""

from __future__ import annotations

import argparse
import csv
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from benchmarks.common import SHARED

DATA = SHARED / "data"
TILE = 160
GREY = (128, 128, 128)
SINGLE_SHARE = 0.25  # images with one photo (and one label)
NEGATIVE_SHARE = 0.1  # with a `negatives` source: images of none of the labels


@dataclass(frozen=True)
class MultilabelSet:
    name: str
    sources: tuple[str, str]  # two sets of ../shared/data: their classes are the labels
    sizes: dict[str, int]  # images per split
    # a third set whose photos (beside a grey tile) are negative examples: no label
    negatives: str | None = None


SETS = (
    MultilabelSet(
        "flowers+caltech",
        ("flowers_small", "caltech101_8class"),
        {"train": 400, "validation": 150, "test": 300},
    ),
    MultilabelSet(
        "pets+vehicles",
        ("cats_vs_dogs_small", "car_vs_minibus_tiny"),
        {"train": 240, "validation": 100, "test": 200},
    ),
)
BY_NAME = {s.name: s for s in SETS}


def _photos(source: str, split: str) -> list[tuple[Path, str]]:
    """Every photo of one split of a shared set, with its class (its folder)."""
    root = DATA / source / split
    return [
        (path, path.parent.name)
        for path in sorted(root.glob("*/*"))
        if path.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]


def _tile(path: Path | None) -> Image.Image:
    if path is None:
        return Image.new("RGB", (TILE, TILE), GREY)
    with Image.open(path) as image:
        return image.convert("RGB").resize((TILE, TILE), Image.Resampling.BILINEAR)


def compose(left: Path | None, right: Path | None) -> Image.Image:
    """Two photos (or a photo and a grey tile) side by side."""
    canvas = Image.new("RGB", (2 * TILE, TILE), GREY)
    canvas.paste(_tile(left), (0, 0))
    canvas.paste(_tile(right), (TILE, 0))
    return canvas


def build(spec: MultilabelSet, out: Path, *, seed: int = 0) -> Path:
    """The set's images and labels.csv under out/<name>; returns that folder."""
    folder = out / spec.name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{spec.name}:{seed}")  # noqa: S311  (a benchmark's draw, not a secret)
    rows: list[tuple[str, str, str]] = []
    for split, count in spec.sizes.items():
        pools = [_photos(source, split) for source in spec.sources]
        others = _photos(spec.negatives, split) if spec.negatives else []
        for pool in [*pools, others]:
            rng.shuffle(pool)
        for index in range(count):
            first, second = (pool[index % len(pool)] for pool in pools)
            chosen = [first, second]
            if rng.random() < SINGLE_SHARE:
                chosen = [rng.choice(chosen)]
            shown = chosen
            if others and rng.random() < NEGATIVE_SHARE:
                chosen, shown = [], [others[index % len(others)]]
            photos: list[tuple[Path, str] | None] = [*shown, None][:2]
            rng.shuffle(photos)
            name = f"images/{split}-{index:04d}.jpg"
            compose(*(p[0] if p else None for p in photos)).save(folder / name, quality=90)
            labels = sorted({label for _, label in chosen})
            rows.append((name, ";".join(labels), split))
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    return folder


def read_labels(folder: Path) -> tuple[list[str], dict[str, list[tuple[str, list[str]]]]]:
    """A built set's labels (sorted) and, per split, each image's path and labels."""
    by_split: dict[str, list[tuple[str, list[str]]]] = {}
    with (folder / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            labels = row["labels"].split(";") if row["labels"] else []
            by_split.setdefault(row["split"], []).append((row["path"], labels))
    classes = sorted({label for rows in by_split.values() for _, ls in rows for label in ls})
    return classes, by_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", nargs="+", default=[s.name for s in SETS])
    args = parser.parse_args()
    for name in args.sets:
        print(build(BY_NAME[name], args.out, seed=args.seed))


if __name__ == "__main__":
    main()
