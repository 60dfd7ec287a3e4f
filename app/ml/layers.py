"""Serializable preprocessing layers, so a saved model takes raw 0..255 pixels."""

from __future__ import annotations

from typing import Any

import keras

# ImageNet channel means in BGR order, as keras.applications' "caffe" preprocessing uses.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="smallvision")
class CaffePreprocess(keras.layers.Layer):  # type: ignore[misc]
    """RGB 0..255 -> BGR with the ImageNet mean subtracted (VGG16, ResNet50)."""

    def call(self, inputs: Any) -> Any:
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=inputs.dtype)


@keras.saving.register_keras_serializable(package="smallvision")
class MirrorImages(keras.layers.Layer):  # type: ignore[misc]
    """Left-right mirror of a batch of (height, width, channels) images, always (not random)."""

    def call(self, inputs: Any) -> Any:
        return keras.ops.flip(inputs, axis=-2)


def preprocessing_layer(kind: str) -> keras.layers.Layer | None:
    """The layer that maps 0..255 pixels to what a base (or a scratch model) expects."""
    if kind == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")
    if kind == "caffe":
        return CaffePreprocess(name="preprocess")
    if kind == "unit":
        return keras.layers.Rescaling(1.0 / 255.0, name="preprocess")
    if kind == "none":
        return None
    raise ValueError(f"unknown preprocessing {kind!r}")
