"""Job payloads as the API shows them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


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
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobAccepted(BaseModel):
    id: uuid.UUID
    status: str
