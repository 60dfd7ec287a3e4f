"""Request-scoped dependencies: the DB session, the caller's API key, and path parameters
that 404 when missing or not the caller's."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.bodies import read_json, read_json_model
from app.core.config import get_settings
from app.core.errors import TooManyRequestsError, UnauthorizedError
from app.db.models import Dataset, TrainingJob
from app.db.session import session_scope
from app.schemas.jobs import JobCreate
from app.schemas.models import MAX_VERSION_NUMBER
from app.schemas.predict import PredictJSONRequest
from app.services import auth, datasets, jobs
from app.services.auth import Principal, Scope
from app.services.inference import MemoryBudget, ModelCache
from app.services.rate_limit import PredictRateLimiter, RateLimiter


def get_session() -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back if it raises."""
    with session_scope() as session:
        yield session


# scope="function": the commit happens when the route function returns, BEFORE the response
# is sent. (A request-scoped yield dependency exits after the response: a client would see
# 201/204 for a write whose commit could still fail.)
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

# Both are declared in the OpenAPI schema, so /docs (and schema-driven clients) can send a key.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="`X-API-Key: <API key>`"
)


def _authenticate(key: str | None) -> Principal:
    # Its own short session: a request-long one would hold a pooled connection through a
    # whole prediction, and 32 concurrent predictions then exhausted the pool (measured).
    with session_scope() as session:
        principal = auth.authenticate(session, key=key)
    assert key is not None
    auth.recently_verified.put(key, principal, ttl=get_settings().api_key_cache_seconds)
    return principal


async def current_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """The caller behind the presented API key (401 without a valid one): from the keys this
    process verified recently, else checked in the database off the event loop. An address
    that keeps sending keys that are not valid is refused (429) before the database is asked:
    each such key costs a lookup, and only valid keys are remembered."""
    key = bearer.credentials if bearer else header_key
    return await principal_for(request, key)


async def principal_for(request: Request, key: str | None) -> Principal:
    """The caller behind `key`, however it was presented (current_principal says how)."""
    if key and (principal := auth.recently_verified.get(key)) is not None:
        return principal
    if not key:
        return await run_in_threadpool(_authenticate, key)  # the 401 costs no lookup
    failures: RateLimiter = request.app.state.failed_key_limiter
    address = request.client.host if request.client else "unknown"
    failures.take(address, spend=False)
    try:
        return await run_in_threadpool(_authenticate, key)
    except UnauthorizedError:
        with contextlib.suppress(TooManyRequestsError):
            failures.take(address)
        raise


def requires(*scopes: Scope) -> Any:
    """A dependency that admits keys holding any of `scopes` (admin holds them all)."""

    # async: a plain function would run in the thread pool, a hop that cost 0.4 ms of every
    # request in a profile of /predict, for a check that does no I/O
    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        return auth.require_scope(principal, scopes)

    return Depends(dependency)


async def _rate_limited_predictor(
    request: Request, principal: Annotated[Principal, requires(Scope.PREDICT)]
) -> Principal:  # async: the in-memory limiter is a lock and arithmetic, Redis' is asyncio
    limiter: PredictRateLimiter = request.app.state.predict_rate_limiter
    await limiter.acquire(principal.key_id)
    return principal


async def custom_vision_trainer(request: Request) -> Principal:
    """Custom Vision's Training API: the key in `Training-Key` (any case; the SDK's
    CognitiveServicesCredentials sends `Ocp-Apim-Subscription-Key`), with the train scope."""
    headers = request.headers
    key = headers.get("training-key") or headers.get("ocp-apim-subscription-key")
    return auth.require_scope(await principal_for(request, key), (Scope.TRAIN,))


async def custom_vision_predictor(request: Request) -> Principal:
    """Custom Vision's Prediction API: the key in `Prediction-Key`, with the predict scope and
    the key's request rate, as every prediction route."""
    headers = request.headers
    key = headers.get("prediction-key") or headers.get("ocp-apim-subscription-key")
    principal = auth.require_scope(await principal_for(request, key), (Scope.PREDICT,))
    limiter: PredictRateLimiter = request.app.state.predict_rate_limiter
    await limiter.acquire(principal.key_id)
    return principal


CustomVisionTrainer = Annotated[Principal, Depends(custom_vision_trainer)]
CustomVisionPredictor = Annotated[Principal, Depends(custom_vision_predictor)]
Admin = Annotated[Principal, requires(Scope.ADMIN)]
Trainer = Annotated[Principal, requires(Scope.TRAIN)]
# Prediction endpoints: the predict scope, and the key's request rate (429 over it).
Predictor = Annotated[Principal, Depends(_rate_limited_predictor)]
RegistryReader = Annotated[Principal, requires(Scope.TRAIN, Scope.PREDICT)]


# JSON bodies are read by dependencies that depend on the caller's key: FastAPI solves that
# dependency first, so an anonymous request is refused before one byte of its body is read.
async def _job_request(request: Request, _: Trainer) -> JobCreate:
    return await read_json_model(request, JobCreate)


async def _predict_json_request(request: Request, _: Predictor) -> PredictJSONRequest:
    return await read_json_model(request, PredictJSONRequest)


async def _json_object(request: Request, _: Predictor) -> Any:
    return await read_json(request, limit=get_settings().max_request_body_bytes)


JobRequest = Annotated[JobCreate, Depends(_job_request)]
PredictJSONBody = Annotated[PredictJSONRequest, Depends(_predict_json_request)]
# Any JSON value, for protocols that interpret the body themselves (TF Serving's /v1).
PredictJSONValue = Annotated[Any, Depends(_json_object)]


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


def decode_budget(request: Request) -> MemoryBudget:
    """The memory this process's image decoding may hold at once (see app.main)."""
    budget: MemoryBudget = request.app.state.decode_budget
    return budget


DecodeBudgetDep = Annotated[MemoryBudget, Depends(decode_budget)]


# Version numbers in paths: a bigger number than the column holds is a 422, not an overflow.
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION_NUMBER)]

# Paging offsets beyond this are no use and would overflow the database's integer.
MAX_OFFSET = 1_000_000_000
