"""Dataset payloads: the upload form and what the API shows of a dataset."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.text import Text


class DatasetUploadForm(BaseModel):
    """The text fields of `POST /datasets` beside the zip `file`."""

    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200)
    validation_fraction: float = Field(
        default=0.2, ge=0.0, le=0.5,
        description="share of each class held out for validation when the zip has no split folders",
    )  # fmt: skip
    test_fraction: float = Field(
        default=0.1, ge=0.0, le=0.5,
        description="share of each class held out for testing when the zip has no split folders",
    )  # fmt: skip
    seed: int = Field(default=1337, ge=0, le=2**31 - 1, description="seed of the split")


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    fingerprint: str | None
    status: str
    class_names: list[str]
    split_counts: dict[str, dict[str, int]]
    stats: dict[str, Any]
    created_at: datetime
