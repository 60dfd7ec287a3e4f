"""The Open Inference Protocol v2 (KServe / Triton HTTP), so `tritonclient[http]` and KServe
clients work unmodified. Encoding lives in app/services/open_inference.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.api.bodies import read_body
from app.api.deps import DecodeBudgetDep, ModelCacheDep, Predictor, SessionDep, VersionNumber
from app.core.config import get_settings
from app.schemas.errors import INFERENCE_RESPONSES
from app.schemas.open_inference import InferRequest
from app.services import inference, model_versions, open_inference
from app.services.auth import Principal
from app.services.health import database_status

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], responses=INFERENCE_RESPONSES)

SERVER_VERSION = "0.1.0"

_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": InferRequest.model_json_schema(),
                "example": {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1],
                            "datatype": "BYTES",
                            "data": ["<base64 image file>"],
                        }
                    ]
                },
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary tensor extension: JSON header of "
                "Inference-Header-Content-Length bytes, then the tensors",
            },
        },
    }
}


@router.get("/health/live")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "not ready"}})
def ready(request: Request) -> Any:
    """Ready once the database answers and the active models are loaded."""
    cache: inference.ModelCache = request.app.state.model_cache
    is_ready = cache.warmed and database_status() == "ok"
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("")
def server_metadata() -> dict[str, Any]:
    return {
        "name": "smallvision",
        "version": SERVER_VERSION,
        "extensions": ["binary_tensor_data", "classification"],
    }


def _metadata(
    cache: inference.ModelCache,
    session: Any,
    name: str,
    version: VersionNumber | None,
    principal: Principal,
) -> dict[str, Any]:
    ref, classifier = inference.loaded_or_404(
        cache, name=name, version=version, principal=principal
    )
    versions = [
        row.version for row in model_versions.list_versions(session, name=name, principal=principal)
    ]
    return open_inference.model_metadata(
        name,
        sorted(versions) if version is None else [ref.version],
        classifier.classes,
        classifier.image_size,
    )


@router.get("/models/{name}", responses={404: {"description": "unknown model"}})
def model_metadata(
    name: str, cache: ModelCacheDep, session: SessionDep, principal: Predictor
) -> dict[str, Any]:
    """Inputs, outputs and labels of the model's active version."""
    return _metadata(cache, session, name, None, principal)


@router.get("/models/{name}/versions/{version}", responses={404: {"description": "unknown"}})
def version_metadata(
    name: str,
    version: VersionNumber,
    cache: ModelCacheDep,
    session: SessionDep,
    principal: Predictor,
) -> dict[str, Any]:
    return _metadata(cache, session, name, version, principal)


@router.get("/models/{name}/ready", responses={404: {"description": "unknown model"}})
def model_ready(name: str, cache: ModelCacheDep, principal: Predictor) -> dict[str, Any]:
    """200 when the model's active version is loaded and can answer."""
    ref, _ = inference.loaded_or_404(cache, name=name, version=None, principal=principal)
    return {"name": name, "version": str(ref.version), "ready": True}


@router.get("/models/{name}/versions/{version}/ready", responses={404: {"description": "-"}})
def version_ready(
    name: str, version: VersionNumber, cache: ModelCacheDep, principal: Predictor
) -> dict[str, Any]:
    ref, _ = inference.loaded_or_404(cache, name=name, version=version, principal=principal)
    return {"name": name, "version": str(ref.version), "ready": True}


async def _infer(
    request: Request,
    cache: inference.ModelCache,
    budget: inference.MemoryBudget,
    principal: Principal,
    name: str,
    version: VersionNumber | None,
) -> Response:
    settings = get_settings()
    body = await read_body(request, limit=settings.max_request_body_bytes)
    parsed = await run_in_threadpool(
        open_inference.parse_infer_request,
        body,
        header_length=request.headers.get(open_inference.HEADER_LENGTH),
        max_images=settings.max_predict_images,
    )
    result = await inference.predict_images(
        cache=cache,
        budget=budget,
        principal=principal,
        images=parsed.images,
        model=name,
        version=version,
    )
    content, headers = open_inference.build_infer_response(parsed, result)
    return Response(content=content, headers=headers)


@router.post("/models/{name}/infer", openapi_extra=_INFER_BODY)
async def infer(
    name: str,
    request: Request,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    principal: Predictor,
) -> Response:
    """Classify encoded images with the model's active version."""
    return await _infer(request, cache, budget, principal, name, None)


@router.post("/models/{name}/versions/{version}/infer", openapi_extra=_INFER_BODY)
async def infer_version(
    name: str,
    version: VersionNumber,
    request: Request,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    principal: Predictor,
) -> Response:
    return await _infer(request, cache, budget, principal, name, version)
