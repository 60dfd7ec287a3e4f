"""Registering trained models as numbered versions in the models store and the database."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.core.config import get_settings
from app.db.models import ModelVersion
from app.db.session import session_scope
from models_store import ModelStore

MAX_VERSION_ATTEMPTS = 5


def model_store() -> ModelStore:
    return ModelStore(get_settings().models_dir)


def register_version(
    *,
    name: str,
    job_id: uuid.UUID,
    source_dir: Path,
    metadata: dict[str, Any],
    metrics_summary: dict[str, Any],
) -> ModelVersion:
    """Store source_dir as the next version of `name` and record it; the first version of a
    name becomes active. Two jobs finishing together get different numbers (unique key)."""
    store = model_store()
    for _ in range(MAX_VERSION_ATTEMPTS):
        with session_scope() as session:
            latest = session.scalar(
                select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
            )
        version = (latest or 0) + 1
        stored = store.write_version(
            name=name, version=version, source_dir=source_dir,
            metadata={**metadata, "version": version},
        )  # fmt: skip
        try:
            with session_scope() as session:
                has_active = session.scalar(
                    select(ModelVersion.id).where(
                        ModelVersion.name == name, ModelVersion.is_active.is_(True)
                    )
                )
                row = ModelVersion(
                    name=name,
                    version=version,
                    job_id=job_id,
                    path=stored.relative_path,
                    sha256=stored.sha256,
                    size_bytes=stored.size_bytes,
                    metrics_summary=metrics_summary,
                    is_active=has_active is None,
                )
                session.add(row)
            return row
        except IntegrityError:
            store.delete_version(stored.relative_path)  # another job took this number
    raise RuntimeError(f"could not allocate a version number for model {name!r}")
