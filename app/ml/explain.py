"""Grad-CAM: where in an image a classifier looked for its answer.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization" (2017): the last convolutional feature map A (h x w x K) weighted per channel by
the mean gradient of the class score over it, alpha_k = mean_ij d y_c / d A_ij^k, then
ReLU(sum_k alpha_k A^k). One forward and one backward pass.

Every model this service saves ends in global average pooling of a convolutional feature map
followed by layers on the pooled vector: scratch models have that pooling in their own graph,
pretrained ones as the last layer of their base (a nested model). A test-time-flip model is
a classifier applied to the image and its mirror image, averaged: its map is the average of
the classifier's map on the image and the mirrored map of its mirror image.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from PIL import Image

from app.ml.layers import MirrorImages, Temperature

Stage = Callable[[Any], Any]


class NotExplainableError(ValueError):
    """The model has no convolutional feature map followed by global average pooling."""


@dataclass(frozen=True)
class Explanation:
    class_index: int  # the label explained: the top one of `probabilities`
    probabilities: np.ndarray  # (classes,) or (1,) for a sigmoid unit, as the model outputs
    heatmap: np.ndarray  # (h, w) of the feature map, 0..1 (all zeros: nothing pointed at)


def _chain(layers: Sequence[keras.layers.Layer]) -> Stage:
    def run(x: Any) -> Any:
        for layer in layers:
            x = layer(x, training=False)
        return x

    return run


def _is_pooling(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.GlobalAveragePooling2D)


def _split(classifier: keras.Model) -> tuple[Stage, Stage]:
    """(pixels -> feature map, feature map -> output) of a scratch or pretrained classifier."""
    layers = [
        layer for layer in classifier.layers if not isinstance(layer, keras.layers.InputLayer)
    ]
    pooling = next((layer for layer in layers if _is_pooling(layer)), None)
    if pooling is not None:  # scratch: the pooling is in this graph
        # called through _chain: with training=False, or BatchNormalization uses the
        # batch's statistics (measured: 0.43 instead of the model's 0.48)
        to_map = keras.Model(classifier.inputs, pooling.input)
        return _chain([to_map]), _chain(layers[layers.index(pooling) :])
    for position, layer in enumerate(layers):  # pretrained: the last layer of a nested base
        if isinstance(layer, keras.Model) and layer.layers and _is_pooling(layer.layers[-1]):
            inner = layer.layers[-1]
            base_to_map = keras.Model(layer.inputs, inner.input)
            return (
                _chain([*layers[:position], base_to_map]),
                _chain([inner, *layers[position + 1 :]]),
            )
    raise NotExplainableError(f"{classifier.name} has no feature map before global pooling")


class GradCam:
    """Grad-CAM of one saved model (build once per loaded model: it traces the split)."""

    def __init__(self, model: keras.Model) -> None:
        self.flip_averaged = any(isinstance(layer, MirrorImages) for layer in model.layers)
        classifier = model
        # A flip-averaged model calibrates the average (its last layer); a plain model's
        # temperature is the last layer of the chain after the feature map.
        self._temperature = None
        if self.flip_averaged and isinstance(model.layers[-1], Temperature):
            self._temperature = model.layers[-1]
        if self.flip_averaged:
            nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
            if len(nested) != 1:
                raise NotExplainableError("a flip-averaged model wraps exactly one classifier")
            classifier = nested[0]
        self._to_map, self._from_map = _split(classifier)

    def explain(self, pixels: np.ndarray) -> Explanation:
        """`pixels`: one image, (1, h, w, 3) float32 0..255 (any size: the model resizes).
        One forward and one backward pass per view: the image, and for a flip-averaged
        model its mirror image, whose map is mirrored back onto the image."""
        import tensorflow as tf

        views = [pixels, pixels[:, :, ::-1, :]] if self.flip_averaged else [pixels]
        maps = [self._to_map(tf.convert_to_tensor(view, dtype=tf.float32)) for view in views]
        with tf.GradientTape() as tape:
            for feature_map in maps:
                tape.watch(feature_map)
            output = tf.add_n([self._from_map(m)[0] for m in maps]) / len(maps)
            if self._temperature is not None:
                output = self._temperature(output[None])[0]
            index = int(np.argmax(_as_class_scores(output.numpy())))
            if output.shape[0] > 1:
                score = output[index]
            else:  # one sigmoid unit: the second class's probability, or the first's
                score = output[0] if index == 1 else 1.0 - output[0]
        gradients = tape.gradient(score, maps)
        heatmaps = [_cam(m[0].numpy(), g[0].numpy()) for m, g in zip(maps, gradients, strict=True)]
        if self.flip_averaged:
            heatmaps[1] = heatmaps[1][:, ::-1]
        heatmap: np.ndarray = np.mean(heatmaps, axis=0)
        peak = float(heatmap.max())
        return Explanation(
            class_index=index,
            probabilities=output.numpy(),
            heatmap=heatmap / peak if peak > 0 else heatmap,
        )


def _as_class_scores(probabilities: np.ndarray) -> np.ndarray:
    """One sigmoid unit p -> [1 - p, p]; a softmax as it is."""
    if probabilities.shape[-1] == 1:
        return np.array([1.0 - probabilities[0], probabilities[0]])
    return probabilities


def _cam(feature_map: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    weights = gradients.mean(axis=(0, 1))  # alpha_k
    cam: np.ndarray = np.maximum((feature_map * weights).sum(axis=-1), 0.0).astype(np.float32)
    return cam


# An overlay is for a person to look at: drawn at most this many pixels on its longer side
# (a 28000x890 image was drawn at full size: +2.3 GB), so one is at most ~0.8 MB of PNG.
OVERLAY_MAX_SIDE = 512


def overlay_base(image: Image.Image, *, upright_size: tuple[int, int]) -> Image.Image:
    """The image an overlay is drawn on: a decoded image (maybe reduced more along one side
    than the other) at its file's own aspect ratio and size, shrunk to fit OVERLAY_MAX_SIDE."""
    width, height = upright_size
    scale = min(1.0, OVERLAY_MAX_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def upsampled(heatmap: np.ndarray, *, width: int, height: int) -> np.ndarray:
    """The heatmap at an image's size (bilinear), 0..1."""
    image = Image.fromarray(heatmap.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.float32)


def overlay_png(image: Image.Image, heatmap: np.ndarray, *, alpha: float = 0.45) -> bytes:
    """The image (from overlay_base) with the heatmap over it (matplotlib's "jet": blue cold,
    red hot), PNG; never larger than OVERLAY_MAX_SIDE."""
    from matplotlib import colormaps

    if max(image.size) > OVERLAY_MAX_SIDE:
        image = overlay_base(image, upright_size=image.size)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = upsampled(heatmap, width=image.width, height=image.height)
    colours = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    weight = alpha * heat[..., None] ** 0.5  # cold regions stay close to the photo
    blended = rgb * (1 - weight) + colours * weight
    buffer = io.BytesIO()
    Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
