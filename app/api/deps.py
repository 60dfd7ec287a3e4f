"""Request-scoped dependencies: the DB session, the caller's API key, and path parameters
that 404 when missing or not the caller's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db.models import Dataset, TrainingJob
from app.db.session import session_scope
from app.schemas.models import MAX_VERSION_NUMBER
from app.services import auth, datasets, jobs
from app.services.auth import Principal, Scope
from app.services.inference import ModelCache
from app.services.rate_limit import RateLimiter


def get_session() -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back if it raises."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

# Both are declared in the OpenAPI schema, so /docs (and schema-driven clients) can send a key.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="`X-API-Key: <API key>`"
)


def current_principal(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """The caller behind the presented API key (401 without a valid one). Its own short
    session: a request-long one would hold a pooled connection through a whole prediction,
    and 32 concurrent predictions then exhausted the pool (measured: 30 s waits, then 500s)."""
    with session_scope() as session:
        return auth.authenticate(session, key=bearer.credentials if bearer else header_key)


def requires(*scopes: Scope) -> Any:
    """A dependency that admits keys holding any of `scopes` (admin holds them all)."""

    def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        return auth.require_scope(principal, scopes)

    return Depends(dependency)


def _rate_limited_predictor(
    request: Request, principal: Annotated[Principal, requires(Scope.PREDICT)]
) -> Principal:
    limiter: RateLimiter = request.app.state.predict_rate_limiter
    limiter.acquire(principal.key_id)
    return principal


Admin = Annotated[Principal, requires(Scope.ADMIN)]
Trainer = Annotated[Principal, requires(Scope.TRAIN)]
# Prediction endpoints: the predict scope, and the key's request rate (429 over it).
Predictor = Annotated[Principal, Depends(_rate_limited_predictor)]
RegistryReader = Annotated[Principal, requires(Scope.TRAIN, Scope.PREDICT)]


def valid_job(job_id: uuid.UUID, session: SessionDep, principal: Trainer) -> TrainingJob:
    return jobs.get_job(session, job_id=job_id, principal=principal)


ValidJob = Annotated[TrainingJob, Depends(valid_job)]


def valid_dataset(dataset_id: uuid.UUID, session: SessionDep, principal: Trainer) -> Dataset:
    return datasets.get_dataset(session, dataset_id=dataset_id, principal=principal)


ValidDataset = Annotated[Dataset, Depends(valid_dataset)]


def model_cache(request: Request) -> ModelCache:
    """This process's loaded models (created at start-up, see app.main)."""
    cache: ModelCache = request.app.state.model_cache
    return cache


ModelCacheDep = Annotated[ModelCache, Depends(model_cache)]


# Version numbers in paths: a bigger number than the column holds is a 422, not an overflow.
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION_NUMBER)]

# Paging offsets beyond this are no use and would overflow the database's integer.
MAX_OFFSET = 1_000_000_000
