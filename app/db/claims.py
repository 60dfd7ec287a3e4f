"""Rows a worker takes and finishes (an export, a dataset analysis): queued -> running on one
worker -> ready or failed, each move conditional, so that a task delivered twice, or a worker
taken for dead and replaced, never writes over another's work."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db.base import Base, utcnow
from app.db.models import ExportStatus
from app.db.session import session_scope


def claim_queued(session: Session, table: type[Base], row_id: uuid.UUID, worker_id: str) -> bool:
    """Move a queued row to running on this worker; False if it is not queued."""
    claimed = session.execute(
        update(table)
        .where(table.id == row_id, table.status == ExportStatus.QUEUED.value)  # type: ignore[attr-defined]
        .values(status=ExportStatus.RUNNING.value, worker_id=worker_id, started_at=utcnow())
    )
    return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]


def finish_running(table: type[Base], row_id: uuid.UUID, worker_id: str, **values: Any) -> bool:
    """Record how a running row ended (status and results), if this worker still holds it."""
    with session_scope() as session:
        finished = session.execute(
            update(table)
            .where(
                table.id == row_id,  # type: ignore[attr-defined]
                table.status == ExportStatus.RUNNING.value,  # type: ignore[attr-defined]
                table.worker_id == worker_id,  # type: ignore[attr-defined]
            )
            .values(finished_at=utcnow(), **values)
        )
        return bool(finished.rowcount == 1)  # type: ignore[attr-defined]
