"""Every setting of a training run, its default and its bounds, defined once.

`TrainingParameters` is what a request may say (POST /jobs takes it beside the dataset);
`StoredParameters` is what a job stores: the request with every default the method and the
base decide filled in, and a version, so that a row written by an older release still loads
(`StoredParameters.load`). The worker turns it into the ML layer's `TrainConfig`
(`to_train_config`). Descriptions take their numbers from the constants of app.ml.config.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from app.ml.bases import BASES, DEFAULT_BASE, BaseName
from app.ml.config import (
    DEFAULT_METHOD,
    FINETUNE_LEARNING_RATES,
    FINETUNE_MAX_EPOCHS,
    FINETUNE_MIN_EPOCHS,
    FINETUNE_TRY_BUDGET,
    HEAD_EPOCHS,
    HEAD_LEARNING_RATE,
    METHOD_DEFAULTS,
    REFIT_BUDGET,
    Augmentation,
    HeadKind,
    Method,
    TrainConfig,
)
from models_store.store import NAME_PATTERN

# Bumped whenever a stored job's parameters change shape; StoredParameters.load upgrades rows
# of every earlier version. 1: before this field existed (the settings a method does not use
# were left out: scratch had no base_model, head, head_epochs, label_smoothing; scratch and
# bottleneck no refit_on_validation).
PARAMETERS_VERSION: Final = 2

_SCRATCH = METHOD_DEFAULTS[Method.SCRATCH]
_NATIVE_SIZE = BASES[DEFAULT_BASE].native_size


class AugmentationParams(BaseModel):
    """Random transforms applied on the fly while training (fractions of size or turn)."""

    model_config = ConfigDict(extra="forbid")

    rotation: float = Field(
        default=Augmentation.rotation, ge=0, le=0.5, description="fraction of a full turn"
    )
    width_shift: float = Field(default=Augmentation.width_shift, ge=0, le=0.5)
    height_shift: float = Field(default=Augmentation.height_shift, ge=0, le=0.5)
    shear: float = Field(default=Augmentation.shear, ge=0, le=0.5)
    zoom: float = Field(default=Augmentation.zoom, ge=0, le=0.5)
    horizontal_flip: bool = Augmentation.horizontal_flip
    vertical_flip: bool = Augmentation.vertical_flip
    brightness: float = Field(default=Augmentation.brightness, ge=0, le=0.5)
    fill_mode: Literal["reflect", "wrap", "constant", "nearest"] = Augmentation.fill_mode


def _rate(value: float) -> str:
    return f"{value:g}"


class TrainingParameters(BaseModel):
    """A training run's settings. Omitted fields take the method's defaults."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field(
        default=DEFAULT_METHOD,
        description="auto (default): bottleneck, then fine-tuning from it (scratch too on "
        "large data), the best on validation is kept; or one of them explicitly",
    )
    base_model: BaseName = DEFAULT_BASE
    image_size: int | None = Field(
        default=None,
        ge=32,
        le=512,
        description=f"default: the base's native size ({_NATIVE_SIZE} px), "
        f"{_SCRATCH.image_size} px for scratch",
    )
    epochs: int | None = Field(
        default=None,
        ge=0,
        le=500,
        description=f"scratch: training epochs ({_SCRATCH.epochs}); bottleneck: the head's, at "
        f"most ({HEAD_EPOCHS}); finetune and auto: fine-tuning epochs after the head (default: "
        f"{FINETUNE_TRY_BUDGET} / training images, {FINETUNE_MIN_EPOCHS} to "
        f"{FINETUNE_MAX_EPOCHS}; 0 skips fine-tuning)",
    )
    batch_size: int = Field(default=32, ge=1, le=512)
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=f"of those epochs: scratch {_rate(_SCRATCH.learning_rate or 0)}, bottleneck "
        f"{_rate(HEAD_LEARNING_RATE)}; finetune and auto: "
        + ", and ".join(_rate(rate) for rate in FINETUNE_LEARNING_RATES)
        + " too where the data is small enough, the better on validation kept",
    )
    augmentation: AugmentationParams | None = Field(
        default_factory=AugmentationParams,
        description="null turns augmentation off; the pretrained methods use its horizontal "
        "flip (the mirrored images' features), scratch all of it",
    )
    dropout: float = Field(default=0.5, ge=0, lt=1, description="scratch and the dense head")
    head: HeadKind = Field(
        default=HeadKind.AUTO,
        description="auto: chosen on validation among linear (softmax on standardised "
        "features, L2 strength chosen on validation) and dense (Dense(256), dropout)",
    )
    label_smoothing: float = Field(default=0.1, ge=0, lt=1, description="pretrained methods")
    early_stopping_patience: int | None = Field(default=None, ge=1, le=100)
    class_weight: Literal["auto"] | None = Field(
        default=None, description="'auto' weighs classes inversely to their training counts"
    )
    test_time_flip: bool = Field(
        default=False,
        description="the model answers with the mean of its predictions on the image and on "
        "its mirror image: sometimes a little more accurate (not always), twice the inference cost",
    )
    refit_on_validation: bool = Field(
        default=True,
        description="finetune and auto: once validation has chosen a fine-tuned model, train "
        "it again on the training and validation images together (where the dataset has a test "
        "split to judge the result, and the data is small enough: training + validation images "
        f"x epochs <= {REFIT_BUDGET})",
    )
    seed: int = Field(default=1337, ge=0, le=2**31 - 1)
    model_name: str | None = Field(
        default=None, pattern=NAME_PATTERN.pattern, description="defaults to the dataset's name"
    )
    head_epochs: int = Field(
        default=HEAD_EPOCHS,
        ge=1,
        le=500,
        description="finetune and auto: the head's epochs before fine-tuning, at most",
    )

    def with_defaults(self, *, model_name: str) -> StoredParameters:
        """These settings with what the method and the base decide filled in (the image size,
        a fixed epoch count and learning rate where the method has them, the model name):
        what a job stores and its worker runs."""
        defaults = METHOD_DEFAULTS[self.method]
        values = {
            **self.model_dump(include=set(TrainingParameters.model_fields)),
            "epochs": self.epochs if self.epochs is not None else defaults.epochs,
            "learning_rate": self.learning_rate or defaults.learning_rate,
            "image_size": self.image_size
            or defaults.image_size
            or BASES[self.base_model].native_size,
            "model_name": self.model_name or model_name,
        }
        return StoredParameters.model_validate(values)


class StoredParameters(TrainingParameters):
    """A job's settings as stored on its row and run by its worker: every default decided."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[2] = PARAMETERS_VERSION
    image_size: int = Field(ge=32, le=512)
    model_name: str = Field(pattern=NAME_PATTERN.pattern)

    def stored(self) -> dict[str, Any]:
        """The JSON the job row keeps."""
        return self.model_dump(mode="json")

    @classmethod
    def load(cls, stored: dict[str, Any], *, method: str) -> Self:
        """A job row's parameters, whatever release stored them (`method`: the row's own)."""
        if stored.get("version") is None:
            stored = _upgrade_from_1(stored, method=method)
        return cls.model_validate(stored)

    def to_train_config(self) -> TrainConfig:
        """The ML layer's config of this run."""
        augmentation = self.augmentation
        return TrainConfig(
            method=self.method,
            image_size=self.image_size,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            dropout=self.dropout,
            seed=self.seed,
            base_model=self.base_model.value,
            augmentation=Augmentation(**augmentation.model_dump()) if augmentation else None,
            early_stopping_patience=self.early_stopping_patience,
            balance_classes=self.class_weight == "auto",
            test_time_flip=self.test_time_flip,
            head=self.head,
            head_epochs=self.head_epochs,
            label_smoothing=self.label_smoothing,
            refit_on_validation=self.refit_on_validation,
        )


def _upgrade_from_1(stored: dict[str, Any], *, method: str) -> dict[str, Any]:
    """Version 1 rows: the settings a method did not use were left out, and a job stored
    before refit_on_validation existed runs without it (as it was asked). A setting no
    release reads any more is dropped."""
    known = {key: value for key, value in stored.items() if key in StoredParameters.model_fields}
    return {
        "base_model": DEFAULT_BASE.value,
        "head": HeadKind.AUTO.value,
        "head_epochs": HEAD_EPOCHS,
        "label_smoothing": TrainConfig.label_smoothing,
        "test_time_flip": False,
        **known,
        "refit_on_validation": stored.get("refit_on_validation", False),
        "method": method,
        "version": PARAMETERS_VERSION,
    }
