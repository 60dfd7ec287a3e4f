"""Request-scoped dependencies: the DB session and path parameters that 404 when missing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.db.models import Dataset, TrainingJob
from app.db.session import session_scope
from app.services import datasets, jobs
from app.services.inference import ModelCache


def get_session() -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back if it raises."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def valid_job(job_id: uuid.UUID, session: SessionDep) -> TrainingJob:
    return jobs.get_job(session, job_id=job_id)


ValidJob = Annotated[TrainingJob, Depends(valid_job)]


def valid_dataset(dataset_id: uuid.UUID, session: SessionDep) -> Dataset:
    return datasets.get_dataset(session, dataset_id=dataset_id)


ValidDataset = Annotated[Dataset, Depends(valid_dataset)]


def model_cache(request: Request) -> ModelCache:
    """This process's loaded models (created at start-up, see app.main)."""
    cache: ModelCache = request.app.state.model_cache
    return cache


ModelCacheDep = Annotated[ModelCache, Depends(model_cache)]
