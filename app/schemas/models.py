"""The model registry's responses."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

# Versions are numbered 1, 2, 3... in a 32-bit INTEGER column.
MAX_VERSION_NUMBER = 2_147_483_647


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    versions: int
    latest_version: int
    active_version: int | None
    updated_at: datetime


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
    created_at: datetime


class ExportRead(BaseModel):
    """A version's export in another format (built by a worker when first asked for)."""

    model_config = ConfigDict(from_attributes=True)

    format: str
    status: Literal["queued", "running", "ready", "failed"]
    size_bytes: int | None
    sha256: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
