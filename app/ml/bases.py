"""ImageNet-pretrained conv bases: which weight file each needs, where it is found or
downloaded from, how to build the base and its top block.

Weight lookup imports no TensorFlow, so the API can check a job's weights before queueing it.
"""

from __future__ import annotations

import enum
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras


class WeightsNotFoundError(FileNotFoundError):
    """The base's ImageNet weights are not on this machine (and downloading is off)."""


class BaseName(enum.StrEnum):
    """The ImageNet-pretrained conv bases a job can build on."""

    MOBILENET_V2 = "mobilenet_v2"
    MOBILENET = "mobilenet"
    VGG16 = "vgg16"
    RESNET50 = "resnet50"
    EFFICIENTNET_B0 = "efficientnet_b0"


DEFAULT_BASE = BaseName.MOBILENET_V2
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class BaseSpec:
    key: BaseName
    constructor: str  # attribute of keras.applications
    # Names Keras downloads the no-top weights as (first), then other accepted copies.
    weight_files: tuple[str, ...]
    # Where Keras downloads the first of them from.
    download_url: str
    # How pixels in 0..255 become the base's inputs: "tf" (-1..1), "caffe" (BGR, mean
    # subtracted) or "none" (the base rescales by itself).
    preprocessing: str
    # The first layer of the top block that fine-tuning unfreezes (everything after it too).
    finetune_from: str
    # The layer whose output is the top block's only input: its activations are cached, so
    # fine-tuning runs the top block alone instead of the whole base every epoch.
    top_input: str
    native_size: int = 224
    min_size: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)


BASES: dict[BaseName, BaseSpec] = {
    spec.key: spec
    for spec in (
        BaseSpec(
            key=BaseName.MOBILENET_V2,
            constructor="MobileNetV2",
            weight_files=(
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                "mobilenet_v2_1.0_224_no_top_tfslim.h5",
            ),
            download_url=f"{KERAS_WEIGHTS_URL}mobilenet_v2/"
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            preprocessing="tf",
            # Blocks 13-16, the last stage.
            finetune_from="block_13_expand",
            top_input="block_12_add",
            kwargs={"alpha": 1.0},
        ),
        BaseSpec(
            key=BaseName.MOBILENET,
            constructor="MobileNet",
            weight_files=("mobilenet_2_5_224_tf_no_top.h5",),
            download_url=f"{KERAS_WEIGHTS_URL}mobilenet/mobilenet_2_5_224_tf_no_top.h5",
            preprocessing="tf",
            finetune_from="conv_dw_13",
            top_input="conv_pw_12_relu",
            kwargs={"alpha": 0.25},
        ),
        BaseSpec(
            key=BaseName.VGG16,
            constructor="VGG16",
            weight_files=("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",),
            download_url=f"{KERAS_WEIGHTS_URL}vgg16/"
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            preprocessing="caffe",
            finetune_from="block5_conv1",
            top_input="block4_pool",
        ),
        BaseSpec(
            key=BaseName.RESNET50,
            constructor="ResNet50",
            weight_files=("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",),
            download_url=f"{KERAS_WEIGHTS_URL}resnet/"
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            preprocessing="caffe",
            finetune_from="conv5_block3_1_conv",
            top_input="conv5_block2_out",
        ),
        BaseSpec(
            key=BaseName.EFFICIENTNET_B0,
            constructor="EfficientNetB0",
            weight_files=("efficientnetb0_notop.h5",),
            download_url="https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
            preprocessing="none",
            finetune_from="block7a_expand_conv",
            top_input="block6d_add",
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


def weights_url(spec: BaseSpec, *, mirror: str | None = None) -> str:
    """Where the base's no-top weights file is downloaded from: Keras' own storage, or the
    same file name under a mirror's URL."""
    if mirror:
        return mirror.rstrip("/") + "/" + spec.weight_files[0]
    return spec.download_url


def missing_weights_message(spec: BaseSpec, *, weights_dir: Path | None) -> str:
    """What to do when a base's weights are not on this machine."""
    where = weights_dir or "SMALLVISION_PRETRAINED_WEIGHTS_DIR"
    return (
        f"base model {spec.key.value!r} needs the ImageNet no-top weights file "
        f"{spec.weight_files[0]!r}: put it in {where} (or in {keras_cache_dir()})"
    )


def download_weights(spec: BaseSpec, *, url: str, timeout: float) -> Path:
    """Download the base's weights file into the Keras cache, as Keras would, but failing
    after `timeout` seconds without an answer (Keras' own download has no timeout: without a
    network a job would hang) with a message that says which file to put where."""
    target = keras_cache_dir() / spec.weight_files[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:  # noqa: S310  (Keras' https storage or a configured mirror)
            shutil.copyfileobj(response, out)
        os.replace(partial, target)  # a download cut short never looks complete
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsNotFoundError(
            f"could not download {url} ({reason}); "
            + missing_weights_message(spec, weights_dir=None)
        ) from exc
    finally:
        partial.unlink(missing_ok=True)
    return target


def build_base(spec: BaseSpec, *, image_size: int, weights: str | None) -> keras.Model:
    """The conv base without its classifier, global-average-pooled, for square inputs
    (`weights`: a weights file path, or None for random weights)."""
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


def top_block(base: keras.Model, spec: BaseSpec) -> keras.Model:
    """The base from `spec.top_input`'s output to its pooled output, sharing the base's
    layers: training it trains the base's top block."""
    import keras

    return keras.Model(base.get_layer(spec.top_input).output, base.output, name="top_block")
