"""Job payloads: the training request and what the API shows of a job."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models_store.store import NAME_PATTERN

BaseModelName = Literal["mobilenet_v2", "mobilenet", "vgg16", "resnet50", "efficientnet_b0"]

# Defaults that follow the recipe for each method (epochs, learning rate).
METHOD_DEFAULTS: dict[str, dict[str, float]] = {
    "scratch": {"epochs": 30, "learning_rate": 1e-3},
    "bottleneck": {"epochs": 20, "learning_rate": 1e-3},
    "finetune": {"epochs": 10, "learning_rate": 1e-5},
}


class AugmentationParams(BaseModel):
    """Random transforms applied on the fly while training (fractions of size or turn)."""

    model_config = ConfigDict(extra="forbid")

    rotation: float = Field(default=0.1, ge=0, le=0.5, description="fraction of a full turn")
    width_shift: float = Field(default=0.1, ge=0, le=0.5)
    height_shift: float = Field(default=0.1, ge=0, le=0.5)
    shear: float = Field(default=0.1, ge=0, le=0.5)
    zoom: float = Field(default=0.1, ge=0, le=0.5)
    horizontal_flip: bool = True
    vertical_flip: bool = False
    brightness: float = Field(default=0.0, ge=0, le=0.5)
    fill_mode: Literal["reflect", "wrap", "constant", "nearest"] = "reflect"


class JobCreate(BaseModel):
    """A training request. Omitted fields take the method's defaults."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: uuid.UUID
    method: Literal["scratch", "bottleneck", "finetune"] = "bottleneck"
    base_model: BaseModelName = "mobilenet_v2"
    image_size: int = Field(default=160, ge=32, le=512)
    epochs: int | None = Field(default=None, ge=1, le=500)
    batch_size: int = Field(default=32, ge=1, le=512)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    augmentation: AugmentationParams | None = Field(
        default_factory=AugmentationParams, description="null turns augmentation off"
    )
    dropout: float = Field(default=0.5, ge=0, lt=1)
    early_stopping_patience: int | None = Field(default=None, ge=1, le=100)
    class_weight: Literal["auto"] | None = Field(
        default=None, description="'auto' weighs classes inversely to their training counts"
    )
    test_time_flip: bool = Field(
        default=False,
        description="the model answers with the mean of its predictions on the image and on "
        "its mirror image: sometimes a little more accurate (not always), twice the inference cost",
    )
    seed: int = Field(default=1337, ge=0, le=2**31 - 1)
    model_name: str | None = Field(
        default=None, pattern=NAME_PATTERN.pattern, description="defaults to the dataset's name"
    )
    head_epochs: int = Field(
        default=10, ge=1, le=500, description="finetune: epochs of the head before unfreezing"
    )


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    dataset_id: uuid.UUID | None
    method: str
    parameters: dict[str, Any]
    status: str
    progress: float
    progress_detail: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    worker_id: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None


class JobAccepted(BaseModel):
    id: uuid.UUID
    status: str


class EpochRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    stage: str
    epoch: int
    loss: float | None
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    learning_rate: float | None
    seconds: float | None


class JobMetrics(BaseModel):
    job_id: uuid.UUID
    status: str
    progress: float
    epochs: list[EpochRead]
    best_epoch: int | None
    evaluation: dict[str, Any] | None
