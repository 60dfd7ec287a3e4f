"""What a worker's TensorFlow runtime can do: versions, devices, and pretrained weight files."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any


def configure_devices(*, mixed_precision: bool = False) -> list[str]:
    """Let TensorFlow grow GPU memory on demand (instead of taking it all) and, on a GPU,
    compute in float16 with float32 weights if asked; return the GPU names."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Several workers (or the API's predictor) may share one card.
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus and mixed_precision:
        # Tensor cores run float16 several times faster; the output layers stay float32
        # (see builders.output_layer) so probabilities and losses keep full precision.
        keras.mixed_precision.set_global_policy("mixed_float16")
    return [gpu.name for gpu in gpus]


def describe_runtime(*, pretrained_weights_dir: Path | None) -> dict[str, Any]:
    """A report of the versions, devices and weight files this process would train with."""
    import keras
    import tensorflow as tf

    gpus = configure_devices()
    weight_files: list[str] = []
    if pretrained_weights_dir is not None and pretrained_weights_dir.is_dir():
        weight_files = sorted(p.name for p in pretrained_weights_dir.glob("*.h5"))
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "gpus": gpus,
        "cpu_devices": [d.name for d in tf.config.list_physical_devices("CPU")],
        "pretrained_weights_dir": str(pretrained_weights_dir) if pretrained_weights_dir else None,
        "pretrained_weight_files": weight_files,
    }
