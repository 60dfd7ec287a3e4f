"""Job payloads: the training request and what the API shows of a job."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.ml.bases import DEFAULT_BASE, BaseName
from app.ml.config import DEFAULT_METHOD, HEAD_EPOCHS, Augmentation, HeadKind, Method
from models_store.store import NAME_PATTERN


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


class JobCreate(BaseModel):
    """A training request. Omitted fields take the method's defaults (app/ml/config.py)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: uuid.UUID
    dataset_version: int | None = Field(
        default=None, ge=1, le=2_147_483_647,
        description="which version of the dataset (any version's id names it) to train on; "
        "default: its latest",
    )  # fmt: skip
    method: Method = Field(
        default=DEFAULT_METHOD,
        description="auto (default): bottleneck, then fine-tuning from it (scratch too on "
        "large data), the best on validation is kept; or one of them explicitly",
    )
    base_model: BaseName = DEFAULT_BASE
    image_size: int | None = Field(
        default=None, ge=32, le=512,
        description="default: the base's native size (224 px), 160 px for scratch",
    )  # fmt: skip
    epochs: int | None = Field(
        default=None, ge=0, le=500,
        description="scratch: training epochs (30); bottleneck: the head's, at most (60); "
        "finetune and auto: fine-tuning epochs after the head (default: 12000 / training "
        "images, 3 to 8; 0 skips fine-tuning)",
    )  # fmt: skip
    batch_size: int = Field(default=32, ge=1, le=512)
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="of those epochs: scratch 1e-3, bottleneck 3e-3; finetune and auto: "
        "1e-4, and 3e-4 too where the data is small enough, the better on validation kept",
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
        "x epochs <= 12000)",
    )
    seed: int = Field(default=1337, ge=0, le=2**31 - 1)
    model_name: str | None = Field(
        default=None, pattern=NAME_PATTERN.pattern, description="defaults to the dataset's name"
    )
    head_epochs: int = Field(
        default=HEAD_EPOCHS, ge=1, le=500,
        description="finetune and auto: the head's epochs before fine-tuning, at most",
    )  # fmt: skip


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    dataset_id: uuid.UUID | None
    dataset_version: int | None
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
    # auto: every model trained (method, settings, validation and test metrics, seconds) and
    # which one was kept and why
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    chosen: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)
