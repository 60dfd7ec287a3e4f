"""Job payloads: the training request and what the API shows of a job."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.db.models import WORKER_CHECK, JobStatus
from app.schemas.results import Candidate, Chosen, Evaluation, JobResult, WorkerReport
from app.schemas.training import TrainingParameters


class JobCreate(TrainingParameters):
    """A training request: the dataset (and which of its versions), and the run's settings
    (app.schemas.training; omitted ones take the method's defaults)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: uuid.UUID
    dataset_version: int | None = Field(
        default=None,
        ge=1,
        le=2_147_483_647,
        description="which version of the dataset (any version's id names it) to train on; "
        "default: its latest",
    )

    def training(self) -> TrainingParameters:
        """The run's settings alone."""
        return TrainingParameters.model_validate(
            self.model_dump(include=set(TrainingParameters.model_fields))
        )


class JobRead(BaseModel):
    """A job: its state, progress, settings and, once it has finished, its result."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    dataset_id: uuid.UUID | None
    dataset_version: int | None
    method: str = Field(description="a training method, or worker_check")
    parameters: dict[str, Any] = Field(
        description="the run's settings with every default filled in (StoredParameters)"
    )
    status: JobStatus
    progress: float = Field(description="0 to 1; 1.0 once the model version is registered")
    progress_detail: dict[str, Any]
    result: JobResult | WorkerReport | None = Field(
        description="a training job's JobResult, a worker check's WorkerReport"
    )
    error: str | None
    worker_id: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @model_validator(mode="before")
    @classmethod
    def _result_of_its_kind(cls, data: Any) -> Any:
        """The result's type follows the job's method (both shapes allow extra fields)."""
        method = getattr(data, "method", None)
        result = getattr(data, "result", None)
        if method is None or result is None or isinstance(result, BaseModel):
            return data
        kind = WorkerReport if method == WORKER_CHECK else JobResult
        fields = {name: getattr(data, name) for name in cls.model_fields}
        return {**fields, "result": kind.model_validate(result)}


class JobAccepted(BaseModel):
    id: uuid.UUID
    status: JobStatus


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
    status: JobStatus
    progress: float
    epochs: list[EpochRead]
    best_epoch: int | None
    evaluation: Evaluation | None
    # auto: every model trained (method, settings, validation and test metrics, seconds) and
    # which one was kept and why
    candidates: list[Candidate]
    chosen: Chosen | None
    warnings: list[str]


class ImageAnswer(BaseModel):
    """One evaluated image: its true labels, the model's answer and whether it is right."""

    image_id: str = Field(description="the sha256 of the image's file in the dataset")
    image_url: str = Field(description="a thumbnail of the image (GET, with your key)")
    true_labels: list[str]
    predicted_labels: list[str] = Field(
        description="the top class; for a multi-label model, the labels at or over their "
        "threshold (none: nothing answered)"
    )
    probabilities: dict[str, float] = Field(description="every class's probability")
    correct: bool = Field(description="the answer is the truth (every label, multi-label)")


class JobPredictions(BaseModel):
    """A job's evaluation image by image: the registered model's answers on the split it was
    evaluated on, filtered and paged; counted by the same rule as the evaluation's totals."""

    job_id: uuid.UUID
    dataset_id: uuid.UUID
    split: str = Field(description="the split evaluated on: test, else validation")
    classes: list[str]
    evaluated: int = Field(description="images in the split")
    correct: int = Field(description="of them, answered right")
    matching: int = Field(description="images the filters keep (items is a page of them)")
    offset: int
    limit: int
    items: list[ImageAnswer]
