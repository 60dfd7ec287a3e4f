"""What a training run is asked to do: plain data, no Keras objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Method = Literal["scratch", "bottleneck", "finetune"]


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
    epochs: int
    batch_size: int
    learning_rate: float
    dropout: float
    seed: int
    base_model: str = "mobilenet_v2"
    augmentation: Augmentation | None = field(default_factory=Augmentation)
    early_stopping_patience: int | None = None
    balance_classes: bool = False
    # the saved model averages its answers on each image and its mirror image
    test_time_flip: bool = False
    # finetune only: epochs of the dense head on cached features before the base is unfrozen
    head_epochs: int = 10
    head_learning_rate: float = 1e-3
