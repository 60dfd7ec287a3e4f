"""Serializable layers of saved models: preprocessing, so a saved model takes raw 0..255
pixels, and the calibration temperature on its output."""

from __future__ import annotations

from typing import Any

import keras

from app.ml.calibration import PROBABILITY_FLOOR

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


@keras.saving.register_keras_serializable(package="smallvision")
class Temperature(keras.layers.Layer):  # type: ignore[misc]
    """softmax(log(p) / T) of a softmax output; sigmoid(logit(p) / T) of one sigmoid unit
    (the same thing for two classes). Saved with the model, so every runtime that serves it
    (Keras, ONNX Runtime, TF Serving) answers calibrated probabilities."""

    def __init__(self, temperature: float, **kwargs: Any) -> None:
        super().__init__(dtype="float32", **kwargs)
        self.temperature = float(temperature)

    def call(self, inputs: Any) -> Any:
        ops = keras.ops
        probabilities = ops.clip(ops.cast(inputs, "float32"), PROBABILITY_FLOOR, 1.0)
        if inputs.shape[-1] == 1:
            logit = ops.log(probabilities) - ops.log(
                ops.clip(1.0 - probabilities, PROBABILITY_FLOOR, 1.0)
            )
            return ops.sigmoid(logit / self.temperature)
        return ops.softmax(ops.log(probabilities) / self.temperature, axis=-1)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.pop("dtype", None)
        return {**config, "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="smallvision")
class PlattScaling(keras.layers.Layer):  # type: ignore[misc]
    """sigmoid(a * logit(p) + b) of each label's sigmoid output, with the slope a and
    intercept b fitted for that label (app/ml/multilabel.py): a multi-label model's
    calibration, saved with it as Temperature is for a softmax."""

    def __init__(self, slopes: list[float], intercepts: list[float], **kwargs: Any) -> None:
        super().__init__(dtype="float32", **kwargs)
        self.slopes = [float(a) for a in slopes]
        self.intercepts = [float(b) for b in intercepts]

    def call(self, inputs: Any) -> Any:
        ops = keras.ops
        probabilities = ops.clip(ops.cast(inputs, "float32"), PROBABILITY_FLOOR, 1.0)
        logit = ops.log(probabilities) - ops.log(
            ops.clip(1.0 - probabilities, PROBABILITY_FLOOR, 1.0)
        )
        slopes = ops.convert_to_tensor(self.slopes, dtype="float32")
        intercepts = ops.convert_to_tensor(self.intercepts, dtype="float32")
        return ops.sigmoid(logit * slopes + intercepts)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.pop("dtype", None)
        return {**config, "slopes": self.slopes, "intercepts": self.intercepts}


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
