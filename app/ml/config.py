"""What a training run is asked to do: plain data, no Keras objects.

The one place where method names and their defaults are defined: the request schema, the
stored job and the services all derive from these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal


class Task(enum.StrEnum):
    """What a dataset's labels say of an image: one class (`multiclass`: a softmax over the
    classes), or any number of its labels, none included (`multilabel`: a sigmoid per label)."""

    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"


class Method(enum.StrEnum):
    """How a job trains. `auto` runs the methods that fit the data and keeps the best."""

    AUTO = "auto"
    SCRATCH = "scratch"
    BOTTLENECK = "bottleneck"
    FINETUNE = "finetune"


DEFAULT_METHOD = Method.AUTO
PRETRAINED_METHODS = frozenset({Method.AUTO, Method.BOTTLENECK, Method.FINETUNE})


class HeadKind(enum.StrEnum):
    """The classifier on a frozen base's pooled features."""

    AUTO = "auto"  # chosen on validation among the ones below
    LINEAR = "linear"  # a softmax layer on standardised features, L2 strength chosen on validation
    DENSE = "dense"  # the tutorial's head: Dense(256, relu), dropout, softmax


@dataclass(frozen=True)
class MethodDefaults:
    # scratch: training epochs; bottleneck: the head's (at most: it stops early);
    # finetune and auto: fine-tuning epochs, after the head (None: finetune_epochs below)
    epochs: int | None
    learning_rate: float | None  # of those epochs; None: chosen on validation (below)
    image_size: int | None  # None: the base's native input size


# The head of finetune and auto: at most this many epochs (it stops early) at this rate.
HEAD_EPOCHS = 60
HEAD_LEARNING_RATE = 3e-3

METHOD_DEFAULTS: dict[Method, MethodDefaults] = {
    Method.SCRATCH: MethodDefaults(epochs=30, learning_rate=1e-3, image_size=160),
    Method.BOTTLENECK: MethodDefaults(
        epochs=HEAD_EPOCHS, learning_rate=HEAD_LEARNING_RATE, image_size=None
    ),
    Method.FINETUNE: MethodDefaults(epochs=None, learning_rate=None, image_size=None),
    Method.AUTO: MethodDefaults(epochs=None, learning_rate=None, image_size=None),
}

# Fine-tuning's cost is bounded, whatever the size of the data: one try at a learning rate
# spends about FINETUNE_TRY_BUDGET image passes (training images x epochs), within
# FINETUNE_MIN_EPOCHS..FINETUNE_MAX_EPOCHS epochs, so a larger set trains fewer epochs of more
# steps each (2000 images: 6 epochs; 1500 or fewer: 8).
FINETUNE_MAX_EPOCHS = 8
FINETUNE_MIN_EPOCHS = 3
FINETUNE_TRY_BUDGET = 12_000


def finetune_epochs(requested: int | None, *, images: int) -> int:
    """The requested fine-tuning epochs, else as many as one try's budget pays for."""
    if requested is not None:
        return requested
    return max(FINETUNE_MIN_EPOCHS, min(FINETUNE_MAX_EPOCHS, FINETUNE_TRY_BUDGET // max(images, 1)))


# Fine-tuning without a learning rate in the request tries these in turn, as many as
# FINETUNE_BUDGET allows, and keeps the one that validates best. Measured (docs/BENCHMARKS.md,
# "Fine-tuning choices"): on 600 flower photos 3e-4 gained 1.5 points over 1e-4, while on
# 2000 cats and dogs it fell below the bottleneck model and 1e-4 did not. A third try at 6e-4
# validated best more often but did not test better (validation sets of 120-200 images).
FINETUNE_LEARNING_RATES = (1e-4, 3e-4)
# Image passes (training images x epochs) that fine-tuning may spend on all its tries
# together: 2000 images x 6 epochs get one try, 600 images x 8 epochs both.
FINETUNE_BUDGET = 16_000


def finetune_learning_rates(requested: float | None, *, images: int, epochs: int) -> list[float]:
    """The learning rates a fine-tuning stage tries: the requested one, else the first of
    FINETUNE_LEARNING_RATES and as many more as the budget pays for."""
    if requested is not None:
        return [requested]
    affordable = FINETUNE_BUDGET // max(images * epochs, 1)
    return list(FINETUNE_LEARNING_RATES[: max(1, affordable)])


# Once validation has chosen a fine-tuned model, it is trained again on the training and
# validation images together (refit_on_validation), where a test split remains to judge it.
# That costs (training + validation images) x epochs image passes and runs where that is at
# most REFIT_BUDGET: flowers_small's 800 x 8, not cats_vs_dogs_small's 3000 x 6, which would
# double its fine-tuning. The runs behind this: docs/BENCHMARKS.md, "Fine-tuning choices".
REFIT_BUDGET = FINETUNE_TRY_BUDGET  # a refit costs at most one learning-rate try


def refit_affordable(*, images: int, epochs: int) -> bool:
    """Whether a fine-tuned model trained on `images` (training + validation) for `epochs`
    may be trained again on them all."""
    return images * epochs <= REFIT_BUDGET


@dataclass(frozen=True)
class Augmentation:
    """On-the-fly augmentation, the options of Keras' ImageDataGenerator in the seed tutorials.
    Factors are fractions: rotation of a full turn, shifts/zoom/shear of the image size."""

    rotation: float = 0.1
    width_shift: float = 0.1
    height_shift: float = 0.1
    shear: float = 0.1
    zoom: float = 0.1
    horizontal_flip: bool = True
    vertical_flip: bool = False
    brightness: float = 0.0
    fill_mode: Literal["reflect", "wrap", "constant", "nearest"] = "reflect"


@dataclass(frozen=True)
class TrainConfig:
    method: Method
    image_size: int
    epochs: int | None  # finetune and auto: None lets the data size decide (finetune_epochs)
    batch_size: int
    learning_rate: float | None  # finetune and auto: None tries FINETUNE_LEARNING_RATES
    dropout: float
    seed: int
    base_model: str = "mobilenet_v2"
    augmentation: Augmentation | None = field(default_factory=Augmentation)
    early_stopping_patience: int | None = None
    balance_classes: bool = False
    # the saved model averages its answers on each image and its mirror image
    test_time_flip: bool = False
    head: HeadKind = HeadKind.AUTO
    head_epochs: int = HEAD_EPOCHS
    head_learning_rate: float = HEAD_LEARNING_RATE
    # label smoothing of the cross-entropy (pretrained methods)
    label_smoothing: float = 0.1
    # finetune and auto: a fine-tuned model kept is trained again on train + validation
    refit_on_validation: bool = True
    # scratch only when the training split has at least this many images (auto)
    scratch_min_images: int = 4000
    task: Task = Task.MULTICLASS

    @property
    def most_epochs(self) -> int:
        """The most epochs this run trains, all stages together: what its progress counts.
        scratch and bottleneck train one stage of `epochs`; finetune and auto a head of at
        most `head_epochs`, then `epochs` of fine-tuning."""
        if self.method is Method.SCRATCH:
            return self.epochs or 0
        if self.method is Method.BOTTLENECK:  # without epochs, the head trains head_epochs
            return self.head_epochs if self.epochs is None else self.epochs
        return self.head_epochs + (FINETUNE_MAX_EPOCHS if self.epochs is None else self.epochs)
