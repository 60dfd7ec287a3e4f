"""TensorFlow Serving's REST API (`/v1/models/...`), so existing TF Serving clients work.
Encoding lives in app/services/tfserving.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import (
    DecodeBudgetDep,
    ModelCacheDep,
    PredictJSONValue,
    Predictor,
    SessionDep,
    VersionNumber,
)
from app.schemas.errors import INFERENCE_RESPONSES
from app.services import inference, model_versions, tfserving
from app.services.auth import Principal

router = APIRouter(prefix="/v1/models", tags=["tensorflow serving"], responses=INFERENCE_RESPONSES)

_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": '{"instances": [...]} (row format) or {"inputs": [...]} (columnar format)',
        "content": {
            "application/json": {
                "schema": {"type": "object"},
                "example": {"instances": [{"b64": "/9j/4AAQSkZJRg..."}]},
            }
        },
    }
}


@router.get("/{name}")
def model_status(name: str, session: SessionDep, principal: Predictor) -> dict[str, Any]:
    """The versions served for `name` (its active version)."""
    ref = model_versions.resolve_version(session, name=name, version=None, principal=principal)
    return tfserving.version_status([ref.version])


@router.get("/{name}/versions/{version}")
def version_status(
    name: str, version: VersionNumber, session: SessionDep, principal: Predictor
) -> dict[str, Any]:
    model_versions.get_version(session, name=name, version=version, principal=principal)
    return tfserving.version_status([version])


async def _metadata(
    cache: inference.ModelCache, name: str, version: VersionNumber | None, principal: Principal
) -> dict[str, Any]:
    ref, classifier = await run_in_threadpool(
        inference.loaded_or_404, cache, name=name, version=version, principal=principal
    )
    return tfserving.model_metadata(name, ref.version, classifier.classes)


@router.get("/{name}/metadata")
async def model_metadata(name: str, cache: ModelCacheDep, principal: Predictor) -> dict[str, Any]:
    """The serving signature: encoded images in, class probabilities out, and the labels."""
    return await _metadata(cache, name, None, principal)


@router.get("/{name}/versions/{version}/metadata")
async def version_metadata(
    name: str, version: VersionNumber, cache: ModelCacheDep, principal: Predictor
) -> dict[str, Any]:
    return await _metadata(cache, name, version, principal)


async def _predict(
    cache: inference.ModelCache,
    budget: inference.MemoryBudget,
    principal: Principal,
    name: str,
    version: VersionNumber | None,
    body: Any,
    response: Response,
) -> dict[str, Any]:
    parsed = tfserving.parse_predict_request(body)
    result = await inference.predict_images(
        cache=cache,
        budget=budget,
        principal=principal,
        images=parsed.images,
        model=name,
        version=version,
    )
    response.headers[inference.RUNTIME_HEADER] = result.runtime
    return tfserving.predict_response(parsed, result.probabilities)


@router.post("/{name}:predict", openapi_extra=_PREDICT_BODY)
async def predict(
    name: str,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    principal: Predictor,
    body: PredictJSONValue,
    response: Response,
) -> dict[str, Any]:
    """TF Serving's predict with the model's active version."""
    return await _predict(cache, budget, principal, name, None, body, response)


@router.post("/{name}/versions/{version}:predict", openapi_extra=_PREDICT_BODY)
async def predict_version(
    name: str,
    version: VersionNumber,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    principal: Predictor,
    body: PredictJSONValue,
    response: Response,
) -> dict[str, Any]:
    return await _predict(cache, budget, principal, name, version, body, response)
