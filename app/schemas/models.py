"""The model registry's responses."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Versions are numbered 1, 2, 3... in a 32-bit INTEGER column.
MAX_VERSION_NUMBER = 2_147_483_647
# What /predict runs: the version's own model, or its int8 ONNX export.
Precision = Literal["float32", "int8"]


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    versions: int
    latest_version: int
    active_version: int | None
    updated_at: datetime


class ExportCheck(BaseModel):
    """A format for devices checked by its own runtime on the version's held-out images,
    beside the float model (accuracy: top-1, or exact label sets for multi-label)."""

    format: str
    runtime: Literal["litert", "onnxruntime"]
    evaluated_on: Literal["test", "validation"]
    images: int
    accuracy: float
    float_accuracy: float
    accuracy_loss_points: float
    agreement: float = Field(description="share of images answered as the float model does")
    max_probability_difference: float
    max_loss_points: float = Field(description="the loss past which the export is degraded")
    degraded: bool = Field(description="downloads answer 409 unless allow_degraded=true")
    size_bytes: int
    seconds: float = Field(description="conversion time")


class ExportRead(BaseModel):
    """A version's export in another format (built by a worker), with its check for the
    formats for devices."""

    model_config = ConfigDict(from_attributes=True)

    format: str
    status: Literal["queued", "running", "ready", "failed"]
    size_bytes: int | None
    sha256: str | None
    error: str | None
    report: ExportCheck | None = None
    created_at: datetime
    finished_at: datetime | None


class ModelVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    version: int
    job_id: uuid.UUID | None
    is_active: bool
    sha256: str
    size_bytes: int
    metrics_summary: dict[str, Any]
    exports: list[ExportRead] = Field(
        default_factory=list, description="exports asked for so far (besides keras and onnx)"
    )
    serving_precision: Precision = Field(
        default="float32",
        description="what /predict runs by default: float32 (the model) or int8 (its int8 "
        "ONNX export); PUT .../serving sets it",
    )
    created_at: datetime


class ServingSettings(BaseModel):
    """PUT /models/{name}/versions/{version}/serving."""

    model_config = ConfigDict(extra="forbid")

    precision: Precision = Field(
        description="int8: answer /predict from the int8 ONNX export (refused with 409 until "
        "that export is built and passed its accuracy check); float32: the model itself"
    )


class VersionInputs(BaseModel):
    """GET /models/{name}/versions/{v}/inputs: what running the version's ONNX model outside
    the service takes (the console's "run in this browser" reads it)."""

    labels: dict[str, Any] = Field(
        description="classes in output order, task, and each label's threshold (multi-label)"
    )
    preprocessing: dict[str, Any] = Field(
        description="what the ONNX model expects: input name and shape, value range, channel "
        "order, EXIF orientation, input_size, shrink_side, resize"
    )
