"""Review queue payloads: a model's threshold, the queue's items, labels and counts."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.text import Text


class ReviewThreshold(BaseModel):
    """`PUT /models/{name}/review`."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(
        gt=0.0,
        le=1.0,
        description="predictions whose top probability is below this are kept for review; "
        "null stops keeping them",
    )


class ReviewThresholdRead(BaseModel):
    model: str
    review_threshold: float | None


class ReviewItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    model_name: str
    model_version: int
    filename: str | None
    image_sha256: str
    image_bytes: int
    # Every class's probability as the model answered, and its top answer.
    scores: dict[str, float]
    top_label: str
    top_probability: float
    status: str
    label: str | None
    created_at: datetime
    labeled_at: datetime | None


class ReviewLabel(BaseModel):
    """`POST /review/items/{id}/label`: the image's true class."""

    model_config = ConfigDict(extra="forbid")

    label: Text = Field(min_length=1, max_length=200)


class ReviewCounts(BaseModel):
    pending: int
    labeled: int
    bytes: int
    # {model name: {"pending": n, "labeled": n}}
    by_model: dict[str, dict[str, int]]
    max_items: int
    max_bytes: int
