"""The plain-Keras script a user would write instead of this service: the baseline to beat.

    .venv/bin/python -m benchmarks.reference_keras [--datasets NAME ...] [--seeds 1 2 3]

Frozen ImageNet MobileNetV2 at 160 px (`image_dataset_from_directory`, the tutorials' loader),
global-average-pooled features, dropout 0.2 and a softmax layer, Adam at 1e-3, batch 32, early
stopping on validation loss (patience 5, best weights restored), at most 50 epochs. The base is
frozen and there is no augmentation, so the features are computed once per dataset and the head
is trained on them: the same model as running the frozen base on every batch, only faster.
Prints one JSON row per dataset and seed; benchmarks/accuracy.py runs it beside the service.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import SHARED

IMAGE_SIZE = 160
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_tfslim.h5"


@dataclass
class Features:
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    classes: list[str]
    seconds: float


def extract(dataset_dir: Path) -> Features:
    import keras

    started = time.perf_counter()
    base = keras.applications.MobileNetV2(
        include_top=False,
        weights=str(WEIGHTS),
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        pooling="avg",
    )
    base.trainable = False
    preprocess = keras.applications.mobilenet_v2.preprocess_input
    arrays = {}
    classes: list[str] = []
    for split in ("train", "validation", "test"):
        data = keras.utils.image_dataset_from_directory(
            dataset_dir / split,
            image_size=(IMAGE_SIZE, IMAGE_SIZE),
            batch_size=64,
            shuffle=False,
            label_mode="int",
            verbose=False,
        )
        classes = list(data.class_names)
        features, labels = [], []
        for images, batch_labels in data:
            features.append(base.predict_on_batch(preprocess(images)))
            labels.append(np.asarray(batch_labels))
        arrays[split] = (np.concatenate(features), np.concatenate(labels))
    return Features(
        arrays["train"],
        arrays["validation"],
        arrays["test"],
        classes,
        time.perf_counter() - started,
    )


def train_head(features: Features, *, seed: int) -> dict:
    import keras

    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    dim = features.train[0].shape[1]
    model = keras.Sequential(
        [
            keras.Input((dim,)),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(len(features.classes), activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(
        *features.train,
        validation_data=features.validation,
        epochs=50,
        batch_size=32,
        callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)],
        verbose=0,
    )
    _, accuracy = model.evaluate(*features.test, verbose=0)
    losses = history.history["val_loss"]
    return {
        "test_accuracy": float(accuracy),
        "best_epoch": int(np.argmin(losses)) + 1,
        "seconds": round(features.seconds + time.perf_counter() - started, 1),
    }


def run(dataset: str, seeds: list[int]) -> list[dict]:
    features = extract(SHARED / "data" / dataset)
    rows = []
    for seed in seeds:
        row = {
            "dataset": dataset,
            "run": "reference",
            "seed": seed,
            **train_head(features, seed=seed),
        }
        features.seconds = 0.0  # extracted once: later seeds pay only for their head
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", help="default: every set in ../shared/data")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    args = parser.parse_args()
    names = args.datasets or sorted(
        path.name for path in (SHARED / "data").iterdir() if (path / "train").is_dir()
    )
    for dataset in names:
        for row in run(dataset, args.seeds):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
