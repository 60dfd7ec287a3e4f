"""Keras models of the small-data recipe. Every model takes raw 0..255 pixels of any size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from app.ml.bases import BaseSpec, build_base
from app.ml.config import Augmentation, Task, TrainConfig
from app.ml.layers import MirrorImages, PlattScaling, Temperature, preprocessing_layer


def augmentation_block(augmentation: Augmentation, *, seed: int) -> keras.Sequential:
    """Random transforms, active only while training (Keras preprocessing layers)."""
    fill = augmentation.fill_mode
    layers: list[keras.layers.Layer] = []
    flip = {
        (True, True): "horizontal_and_vertical",
        (True, False): "horizontal",
        (False, True): "vertical",
    }.get((augmentation.horizontal_flip, augmentation.vertical_flip))
    if flip:
        layers.append(keras.layers.RandomFlip(flip, seed=seed))
    if augmentation.rotation:
        layers.append(keras.layers.RandomRotation(augmentation.rotation, fill_mode=fill, seed=seed))
    if augmentation.width_shift or augmentation.height_shift:
        layers.append(
            keras.layers.RandomTranslation(
                augmentation.height_shift, augmentation.width_shift, fill_mode=fill, seed=seed
            )
        )
    if augmentation.shear:
        layers.append(
            keras.layers.RandomShear(
                x_factor=augmentation.shear, y_factor=augmentation.shear, fill_mode=fill, seed=seed
            )
        )
    if augmentation.zoom:
        layers.append(keras.layers.RandomZoom(augmentation.zoom, fill_mode=fill, seed=seed))
    if augmentation.brightness:
        layers.append(
            keras.layers.RandomBrightness(
                augmentation.brightness, value_range=(0.0, 255.0), seed=seed
            )
        )
    return keras.Sequential(layers, name="augmentation")


def output_layer(class_count: int, task: Task = Task.MULTICLASS) -> keras.layers.Dense:
    """One sigmoid unit for two classes, a softmax otherwise; a sigmoid per label for a
    multi-label model (float32 under mixed precision)."""
    if task is Task.MULTILABEL:
        return keras.layers.Dense(
            class_count, activation="sigmoid", dtype="float32", name="predictions"
        )
    if class_count == 2:
        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="predictions")
    return keras.layers.Dense(
        class_count, activation="softmax", dtype="float32", name="predictions"
    )


def loss_for(class_count: int) -> str:
    return "binary_crossentropy" if class_count == 2 else "sparse_categorical_crossentropy"


def targets(labels: np.ndarray, class_count: int, task: Task) -> np.ndarray:
    """What a head or a fine-tuned block fits: one-hot rows of class indices, or a multi-label
    set's 0/1 rows as they are."""
    if task is Task.MULTILABEL:
        return labels.astype(np.float32)
    encoded: np.ndarray = np.eye(class_count, dtype=np.float32)[labels]
    return encoded


def epoch_metrics(task: Task) -> list[Any]:
    """What the job's curves show as accuracy per epoch: the share of images answered right,
    or for a multi-label model the share of (image, label) answers right at 0.5 (Keras'
    "accuracy" would compare the argmax of the labels: meaningless with several)."""
    if task is Task.MULTILABEL:
        return [keras.metrics.BinaryAccuracy(name="accuracy")]
    return ["accuracy"]


def training_loss(
    task: Task,
    *,
    label_smoothing: float,
    label_weights: tuple[np.ndarray, np.ndarray] | None = None,
) -> Any:
    """The loss a head or a fine-tuned block trains with: the cross-entropy of the softmax, or
    the mean binary cross-entropy of each label's sigmoid, its positive and negative examples
    weighted per label where `label_weights` gives them (data.balanced_label_weights; Keras'
    class_weight knows one class per image)."""
    if task is Task.MULTICLASS:
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if label_weights is None:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    positive = keras.ops.convert_to_tensor(label_weights[0], dtype="float32")
    negative = keras.ops.convert_to_tensor(label_weights[1], dtype="float32")

    def weighted_binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        truth = ops.cast(y_true, "float32")
        smoothed = truth * (1.0 - label_smoothing) + 0.5 * label_smoothing
        p = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        weights = truth * positive + (1.0 - truth) * negative
        per_label = -(smoothed * ops.log(p) + (1.0 - smoothed) * ops.log(1.0 - p))
        return ops.mean(weights * per_label, axis=-1)

    return weighted_binary_crossentropy


def _pixel_input(image_size: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inputs = keras.Input(shape=(None, None, 3), name="pixels")
    resized = keras.layers.Resizing(image_size, image_size, name="resize")(inputs)
    return inputs, resized


def with_augmentation(
    classifier: keras.Model, augmentation: Augmentation | None, *, image_size: int, seed: int
) -> keras.Model:
    """The model to fit: random transforms in front of the classifier, sharing its weights.

    The classifier alone is what gets saved and served. Keeping the augmentation layers out
    of it matters beyond tidiness: measured with Keras 3.15, a saved model containing
    RandomShear cannot be loaded again (its factor is saved as [-f, f] and then refused).
    """
    if augmentation is None:
        return classifier
    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = augmentation_block(augmentation, seed=seed)(inputs)
    return keras.Model(inputs, classifier(x), name=f"augmented_{classifier.name}")


def with_test_time_flip(classifier: keras.Model) -> keras.Model:
    """The classifier's mean answer on an image and its mirror image (twice the inference cost;
    not a sure gain, which is why it is off by default: docs/BENCHMARKS.md)."""
    inputs = keras.Input(shape=(None, None, 3), name="pixels")
    mirrored = MirrorImages(name="mirror")(inputs)
    outputs = keras.layers.Average(name="flip_average", dtype="float32")(
        [classifier(inputs), classifier(mirrored)]
    )
    return keras.Model(inputs, outputs, name=f"{classifier.name}_flip_averaged")


def with_platt(classifier: keras.Model, slopes: np.ndarray, intercepts: np.ndarray) -> keras.Model:
    """The multi-label classifier with each label's Platt scaling as its last layer."""
    layer = PlattScaling(slopes.tolist(), intercepts.tolist(), name="platt")
    return keras.Model(classifier.inputs, layer(classifier.outputs[0]), name=classifier.name)


def with_temperature(classifier: keras.Model, temperature: float) -> keras.Model:
    """The classifier with its probabilities calibrated by `temperature` as its last layer (in
    the same graph, so Grad-CAM still finds the base and head inside it)."""
    outputs = Temperature(temperature, name="temperature")(classifier.outputs[0])
    return keras.Model(classifier.inputs, outputs, name=classifier.name)


# The pooled activations a model's dense output reads: a pretrained model's are the input of
# its "head" (the base's pooled features), a scratch model's the output of this layer.
HEAD_LAYER = "head"
EMBEDDING_LAYER = "embedding"


@dataclass(frozen=True)
class FrozenTop:
    """A fine-tuned model's top block as it was before fine-tuning (its ImageNet weights).

    The unknown answer compares the frozen base's pooled features: no training changed them,
    so the validation images' scores are those of new images (a fine-tuned model refit on
    the validation images pulled them in, and turned away 7-11 % of caltech101_8class's own
    test photos with its own features). The served graph computes them from the activations
    entering the top block, which fine-tuning did not change, through this copy: a fifth of
    the base's compute more."""

    top_input: str  # the layer whose output enters the top block
    weights: dict[str, list[np.ndarray]]  # layer name -> its weights, every layer after it

    @classmethod
    def of(cls, base: keras.Model, spec: BaseSpec, *, weights: list[np.ndarray]) -> FrozenTop:
        """The top block of `base` with `weights` (the base's, as `get_weights` lists them,
        from before fine-tuning)."""
        frozen = keras.models.clone_model(base)
        frozen.set_weights(weights)
        names = [layer.name for layer in frozen.layers]
        start = names.index(spec.top_input) + 1
        return cls(
            top_input=spec.top_input,
            weights={
                layer.name: [np.asarray(w) for w in layer.get_weights()]
                for layer in frozen.layers[start:]
                if layer.weights
            },
        )

    def block(self, base: keras.Model) -> keras.Model:
        """This top block on a copy of `base`'s layers (which may be fine-tuned): from the
        output of `top_input` to the pooled features. Only the layers after `top_input` are
        in it, and every one of them with weights gets this block's."""
        frozen = keras.models.clone_model(base)
        for name, weights in self.weights.items():
            frozen.get_layer(name).set_weights(weights)
        return keras.Model(frozen.get_layer(self.top_input).output, frozen.output)

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {
            f"{name}/{index}": weight
            for name, weights in self.weights.items()
            for index, weight in enumerate(weights)
        }
        np.savez(path, top_input=np.array(self.top_input), **arrays)

    @classmethod
    def load(cls, path: Path) -> FrozenTop:
        weights: dict[str, list[np.ndarray]] = {}
        with np.load(path, allow_pickle=False) as stored:
            top_input = str(stored["top_input"])
            keys = [key for key in stored.files if key != "top_input"]
            for key in sorted(keys, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))):
                weights.setdefault(key.rsplit("/", 1)[0], []).append(stored[key])
        return cls(top_input=top_input, weights=weights)


def with_embedding(
    classifier: keras.Model, *, frozen_top: FrozenTop | None = None
) -> keras.Model | None:
    """The classifier with a second output: the pooled features the unknown answer compares
    (the input of its head; with `frozen_top`, a fine-tuned model's, the frozen base's). None
    when it has none at its top level (a model wrapped for a test-time flip, or saved before
    the layer was named)."""
    names = {layer.name for layer in classifier.layers}
    if HEAD_LAYER in names:
        # A pretrained classifier is a chain (resize, preprocess, base, head, temperature):
        # its layers applied again in order give the head's input in this graph. The head's
        # own `.input` is the input it was built with, until the classifier is saved and
        # loaded again.
        inputs = keras.Input(shape=(None, None, 3), name="pixels")
        x, embedding = inputs, inputs
        for layer in classifier.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if frozen_top is not None and _holds(layer, frozen_top.top_input):
                both = keras.Model(
                    layer.inputs, [layer.output, layer.get_layer(frozen_top.top_input).output]
                )
                x, entering = both(x)
                embedding = frozen_top.block(layer)(entering)
                continue
            if layer.name == HEAD_LAYER and frozen_top is None:
                embedding = x
            x = layer(x)
        return keras.Model(inputs, [x, embedding], name=classifier.name)
    if EMBEDDING_LAYER in names:
        embedding = classifier.get_layer(EMBEDDING_LAYER).output
        return keras.Model(
            classifier.inputs, [classifier.outputs[0], embedding], name=classifier.name
        )
    return None


def _holds(layer: keras.layers.Layer, name: str) -> bool:
    return isinstance(layer, keras.Model) and any(inner.name == name for inner in layer.layers)


SCRATCH_FILTERS = (32, 64, 128, 256, 512)
# Keras' default 0.99 needs several hundred steps before the moving statistics that inference
# uses match the batches': a 120-image set makes 4 steps an epoch, 120 in a 30-epoch run, and
# the model answered one class for everything (0.50 on car_vs_minibus_tiny, where 0.9 gives
# 0.825 on the same seed; docs/BENCHMARKS.md).
SCRATCH_BATCH_NORM_MOMENTUM = 0.9


def build_scratch_model(config: TrainConfig, *, class_count: int) -> keras.Model:
    """The small convnet of the recipe (conv/pool blocks, dropout, a dense output) in the
    mini-Xception form of Deep Learning with Python (2nd ed., 9.3.4): each block is two
    BatchNormalization/ReLU/separable-convolution steps and a max pool, with a strided 1x1
    convolution as a residual shortcut, then global average pooling (its accuracy against
    plainer models: docs/BENCHMARKS.md). Augmentation is added for training by
    `with_augmentation`."""
    inputs, x = _pixel_input(config.image_size)
    rescale = preprocessing_layer("unit")
    assert rescale is not None
    x = rescale(x)
    x = keras.layers.Conv2D(SCRATCH_FILTERS[0], 5, use_bias=False)(x)
    for filters in SCRATCH_FILTERS:
        shortcut = keras.layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x)
        for _ in range(2):
            x = keras.layers.BatchNormalization(momentum=SCRATCH_BATCH_NORM_MOMENTUM)(x)
            x = keras.layers.Activation("relu")(x)
            x = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = keras.layers.add([x, shortcut])
    x = keras.layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(x)
    x = keras.layers.Dropout(config.dropout, seed=config.seed)(x)
    outputs = output_layer(class_count, config.task)(x)
    return keras.Model(inputs, outputs, name="scratch")


def feature_extractor(
    base: keras.Model, spec: BaseSpec, *, image_size: int, with_top_inputs: bool
) -> keras.Model:
    """Resized 0..255 pixels -> the frozen base's pooled features, and (with_top_inputs) the
    activations entering its top block, which fine-tuning starts from."""
    inputs = keras.Input(shape=(image_size, image_size, 3))
    x = inputs
    if (preprocess := preprocessing_layer(spec.preprocessing)) is not None:
        x = preprocess(x)
    if not with_top_inputs:
        return keras.Model(inputs, base(x, training=False), name="feature_extractor")
    both = keras.Model(
        base.inputs, [base.output, base.get_layer(spec.top_input).output], name="base_outputs"
    )
    pooled, top = both(x, training=False)
    return keras.Model(inputs, [pooled, top], name="feature_extractor")


def frozen_base(spec: BaseSpec, *, image_size: int, weights: Path) -> keras.Model:
    """The pretrained base with every layer frozen (fine-tuning unfreezes its top later)."""
    base = build_base(spec, image_size=image_size, weights=str(weights))
    base.trainable = False
    return base


def freeze_batch_norm(model: keras.Model) -> None:
    """Keep BatchNormalization in inference mode and its statistics fixed. Measured with Keras
    3.15: calling the base with training=False alone does NOT do this once layers are
    unfrozen, so every BN layer is set untrainable explicitly."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def unfreeze_top(base: keras.Model, spec: BaseSpec) -> int:
    """Make the base's top block trainable (from spec.finetune_from on), BN layers excepted.
    Returns how many layers were unfrozen."""
    names = [layer.name for layer in base.layers]
    if spec.finetune_from not in names:
        raise ValueError(f"{spec.key}: no layer {spec.finetune_from!r} to fine-tune from")
    start = names.index(spec.finetune_from)
    base.trainable = True
    unfrozen = 0
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= start
        unfrozen += int(layer.trainable)
    freeze_batch_norm(base)
    return unfrozen


def build_pretrained_model(
    base: keras.Model, head: keras.Model, spec: BaseSpec, *, image_size: int
) -> keras.Model:
    """Pixels of any size -> resize -> preprocess -> base -> head."""
    inputs, x = _pixel_input(image_size)
    if (preprocess := preprocessing_layer(spec.preprocessing)) is not None:
        x = preprocess(x)
    x = base(x, training=False)
    outputs = head(x)
    return keras.Model(inputs, outputs, name=f"{spec.key}_classifier")
