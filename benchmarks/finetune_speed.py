"""Where the fine-tuning stage's time goes: one epoch of the service's fine-tuning model
against the arithmetic it does, and the settings said to slow it down, each switched.

    .venv/bin/python -m benchmarks.finetune_speed [--images 1000] [--repeats 2]

The stage trains MobileNetV2's top block (blocks 13-16 and the last 1x1 convolution) with the
head on cached activations entering block 13 (app/ml/finetune.py). Every variant runs in its
own process (op determinism and XLA are process-wide), on the same synthetic activations (the
arithmetic of a convolution does not depend on the values), 224 px, batches of 32:

- forward: the top block and head in inference, a traced function, batches of 32;
- epoch: one training epoch (forward, backward, Adam) over the images, after a traced warm-up.
  A backward pass costs about twice a forward one, so an epoch at the machine's speed takes
  about 3x the forward pass; "epoch / forward" says how far the stage is from that.

Variants: "service" is the stage as the worker runs it (the service's own `_trainer`: op
determinism on, the random feature-map shift, the sampled-views tf.data pipeline, XLA off,
because Keras turns `jit_compile` off for both); then determinism off; the shift replaced by
nothing; XLA on (shift off and determinism off, the only way Keras lets it compile); and one
inter-op thread. Writes the "finetune-speed" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import SHARED, machine, write_section

BATCH = 32
IMAGE_SIZE = 224
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_tfslim.h5"


@dataclass(frozen=True)
class Variant:
    name: str
    determinism: bool = True
    shift: bool = True
    xla: bool = False
    inter_op_threads: int = 0  # 0: TensorFlow's default
    service_trainer: bool = True  # the model and batches the worker builds


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("service"),
        Variant("determinism off", determinism=False),
        Variant("no feature-map shift", shift=False, service_trainer=False),
        Variant(
            "XLA (no shift, no determinism)",
            determinism=False,
            shift=False,
            xla=True,
            service_trainer=False,
        ),
        Variant("one inter-op thread", inter_op_threads=1),
    )
}


def top_block_flops(top: Any) -> int:
    """Multiply-adds x 2 of one image through the top block's convolutions (batch norm,
    activations, additions and the head are left out: they are a few per cent)."""
    import keras

    flops = 0
    for layer in top._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            height, width, channels = layer.output.shape[1:]
            kernel = layer.kernel_size[0] * layer.kernel_size[1]
            flops += 2 * height * width * channels * kernel
        elif isinstance(layer, keras.layers.Conv2D):
            height, width, out_channels = layer.output.shape[1:]
            in_channels = layer.input.shape[-1]
            kernel = layer.kernel_size[0] * layer.kernel_size[1]
            flops += 2 * height * width * in_channels * out_channels * kernel
    return flops


def measure(variant: Variant, *, images: int) -> dict[str, Any]:
    """In this process: the forward pass and one training epoch under `variant`."""
    import keras
    import numpy as np
    import tensorflow as tf

    from app.ml import bases, builders, finetune, heads

    if variant.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(variant.inter_op_threads)
    keras.utils.set_random_seed(1)
    if variant.determinism:
        tf.config.experimental.enable_op_determinism()
    spec = bases.BASES[bases.BaseName.MOBILENET_V2]
    base = builders.frozen_base(spec, image_size=IMAGE_SIZE, weights=WEIGHTS)
    shape = base.get_layer(spec.top_input).output.shape[1:]
    rng = np.random.default_rng(0)
    views = [rng.normal(0.0, 1.0, (images, *shape)).astype(np.float16) for _ in range(2)]
    labels = rng.integers(0, 2, images)
    pooled = rng.random((images, base.output.shape[-1]), dtype=np.float32)
    head = heads.build_head(
        heads.HeadSpec(kind=heads.HeadKind.DENSE, dropout=0.5),
        feature_dim=pooled.shape[1],
        class_count=2,
        train_x=pooled,
        seed=1,
    )
    training = finetune.TopTraining(
        class_count=2, epochs=1, learning_rate=1e-4, batch_size=BATCH, label_smoothing=0.0, seed=1
    )
    if variant.service_trainer:
        model, batches = finetune._trainer(base, spec, head, views, labels, training)
    else:
        top = bases.top_block(base, spec)
        builders.unfreeze_top(base, spec)
        inputs = keras.Input(shape=shape)
        model = keras.Model(inputs, head(top(inputs)))
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss="categorical_crossentropy",
            jit_compile=variant.xla,
        )
        batches = finetune.sampled_views(views, heads.one_hot(labels, 2), batch_size=BATCH, seed=1)
    if model.jit_compile != variant.xla:
        raise RuntimeError(f"{variant.name}: jit_compile is {model.jit_compile}")

    forward = tf.function(lambda x: model(x, training=False), jit_compile=variant.xla)
    inputs32 = views[0].astype(np.float32)
    forward(inputs32[:BATCH])
    started = time.perf_counter()
    for start in range(0, images - BATCH + 1, BATCH):
        forward(inputs32[start : start + BATCH])
    forward_seconds = (time.perf_counter() - started) * images / (images - images % BATCH)

    # Trace the train step for a full batch and for the last, smaller one (XLA compiles per
    # shape: a first sight of the remainder inside the timed epoch would be a compilation).
    steps = -(-images // BATCH)
    model.fit(batches.take(1).concatenate(batches.skip(steps - 1)), epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(batches, epochs=1, verbose=0)
    epoch_seconds = time.perf_counter() - started
    flops = top_block_flops(bases.top_block(base, spec))
    return {
        "variant": variant.name,
        "images": images,
        "forward_seconds": forward_seconds,
        "epoch_seconds": epoch_seconds,
        "forward_gflops": flops * images / forward_seconds / 1e9,
        "epoch_gflops": 3 * flops * images / epoch_seconds / 1e9,
        "flops_per_image": flops,
    }


def child(name: str, *, images: int) -> dict[str, Any]:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.finetune_speed",
            "--child",
            name,
            "--images",
            str(images),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode or not lines:
        raise RuntimeError(f"{name} failed:\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def report(rows: list[dict[str, Any]], *, images: int, repeats: int) -> str:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    service_epoch = statistics.median(row["epoch_seconds"] for row in by_variant["service"])
    flops = rows[0]["flops_per_image"]
    lines = [
        "## Fine-tuning stage: where an epoch's time goes",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, CPU only, with",
        f"`.venv/bin/python -m benchmarks.finetune_speed --images {images} --repeats {repeats}`:",
        "MobileNetV2's top block (blocks 13-16 and the last 1x1 convolution,",
        f"{flops / 1e6:.0f} MFLOP per image forward) with the dense head, on {images} synthetic",
        "activations of block 12 (224 px), batches of 32; every variant in its own process,",
        f"{repeats} runs each, in turn (medians; the machine is shared). An epoch at the",
        "machine's speed costs about 3x the forward pass (the backward pass is about twice the",
        "forward); GFLOP/s counts the convolutions only.",
        "",
        "| variant | forward s | epoch s | epoch / forward | forward GFLOP/s | epoch GFLOP/s "
        "| epoch vs service |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in by_variant.items():
        forward = statistics.median(run["forward_seconds"] for run in runs)
        epoch = statistics.median(run["epoch_seconds"] for run in runs)
        lines.append(
            f"| {name} | {forward:.2f} | {epoch:.2f} | {epoch / forward:.2f} "
            f"| {statistics.median(run['forward_gflops'] for run in runs):.0f} "
            f"| {statistics.median(run['epoch_gflops'] for run in runs):.0f} "
            f"| {epoch / service_epoch:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--from-log", type=Path, help="only write the table from an earlier run's JSON rows"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(VARIANTS[args.child], images=args.images)))
        return
    rows = []
    if args.from_log:
        lines = args.from_log.read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.startswith("{")]
    for repeat in range(0 if args.from_log else args.repeats):
        for name in VARIANTS:
            row = child(name, images=args.images)
            print(json.dumps({**row, "repeat": repeat}), flush=True)
            rows.append(row)
    body = report(rows, images=args.images, repeats=args.repeats)
    print(body)
    write_section("finetune-speed", body)


if __name__ == "__main__":
    main()
