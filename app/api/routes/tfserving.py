"""TensorFlow Serving's REST API (`/v1/models/...`), so existing TF Serving clients work.

Images travel as `{"b64": "..."}` (TF Serving's binary-value convention), optionally wrapped
as `{"image_bytes": {"b64": "..."}}` (the Cloud ML Engine image convention). Predictions are
each image's class probabilities in label order (see the model's metadata for the labels).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body
from fastapi.concurrency import run_in_threadpool

from app.api.deps import ModelCacheDep, Predictor, SessionDep, VersionNumber
from app.core.errors import BadRequestError
from app.schemas.errors import INFERENCE_RESPONSES
from app.services import inference, model_versions
from app.services.auth import Principal
from app.services.inference import ImagePayload

router = APIRouter(prefix="/v1/models", tags=["tensorflow serving"], responses=INFERENCE_RESPONSES)

_PREDICT_BODY = Body(
    examples=[{"instances": [{"b64": "/9j/4AAQSkZJRg..."}]}],
    description='{"instances": [...]} (row format) or {"inputs": [...]} (columnar format)',
)


def _status(versions: list[int]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in versions
        ]
    }


@router.get("/{name}")
def model_status(name: str, session: SessionDep, principal: Predictor) -> dict[str, Any]:
    """The versions served for `name` (its active version)."""
    ref = model_versions.resolve_version(session, name=name, version=None, principal=principal)
    return _status([ref.version])


@router.get("/{name}/versions/{version}")
def version_status(
    name: str, version: VersionNumber, session: SessionDep, principal: Predictor
) -> dict[str, Any]:
    model_versions.get_version(session, name=name, version=version, principal=principal)
    return _status([version])


async def _metadata(
    cache: inference.ModelCache, name: str, version: VersionNumber | None, principal: Principal
) -> dict[str, Any]:
    ref, classifier = await run_in_threadpool(
        inference.loaded_or_404, cache, name=name, version=version, principal=principal
    )
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(ref.version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {
                            "b64": {
                                "dtype": "DT_STRING",
                                "tensor_shape": {"dim": [{"size": "-1", "name": ""}]},
                                "name": "image_bytes",
                            }
                        },
                        "outputs": {
                            "probabilities": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": {
                                    "dim": [
                                        {"size": "-1", "name": ""},
                                        {"size": str(len(classifier.classes)), "name": ""},
                                    ]
                                },
                                "name": "probabilities",
                            }
                        },
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            },
            "labels": classifier.classes,
        },
    }


@router.get("/{name}/metadata")
async def model_metadata(name: str, cache: ModelCacheDep, principal: Predictor) -> dict[str, Any]:
    """The serving signature: encoded images in, class probabilities out, and the labels."""
    return await _metadata(cache, name, None, principal)


@router.get("/{name}/versions/{version}/metadata")
async def version_metadata(
    name: str, version: VersionNumber, cache: ModelCacheDep, principal: Predictor
) -> dict[str, Any]:
    return await _metadata(cache, name, version, principal)


def _image_bytes(item: Any, index: int) -> bytes:
    """One instance: {"b64": ...}, {"image_bytes": {"b64": ...}} or {<any key>: {"b64": ...}}."""
    what = f"instance {index + 1}"
    if isinstance(item, dict) and len(item) == 1:
        ((key, value),) = item.items()
        if key == "b64" and isinstance(value, str):
            return inference.decode_base64(value, what=what)
        if isinstance(value, dict) and isinstance(value.get("b64"), str) and len(value) == 1:
            return inference.decode_base64(value["b64"], what=what)
    raise BadRequestError(f'{what}: expected {{"b64": "<base64 image>"}}')


async def _predict(
    cache: inference.ModelCache,
    principal: Principal,
    name: str,
    version: VersionNumber | None,
    body: dict[str, Any],
) -> dict[str, Any]:
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise BadRequestError('send either "instances" or "inputs"')
    key = "instances" if "instances" in body else "inputs"
    items = body[key]
    if isinstance(items, dict):  # columnar with a named input: {"inputs": {"image": [...]}}
        if len(items) != 1:
            raise BadRequestError(f'"{key}" must name exactly one input')
        (items,) = items.values()
    if not isinstance(items, list) or not items:
        raise BadRequestError(f'"{key}" must be a non-empty list of images')
    images = [ImagePayload(data=_image_bytes(item, i)) for i, item in enumerate(items)]
    result = await inference.predict_images(
        cache=cache, principal=principal, images=images, model=name, version=version
    )
    probabilities = result.probabilities.astype(float).tolist()
    return {"predictions": probabilities} if key == "instances" else {"outputs": probabilities}


@router.post("/{name}:predict")
async def predict(
    name: str, cache: ModelCacheDep, principal: Predictor, body: dict[str, Any] = _PREDICT_BODY
) -> dict[str, Any]:
    """TF Serving's predict with the model's active version."""
    return await _predict(cache, principal, name, None, body)


@router.post("/{name}/versions/{version}:predict")
async def predict_version(
    name: str,
    version: VersionNumber,
    cache: ModelCacheDep,
    principal: Predictor,
    body: dict[str, Any] = _PREDICT_BODY,
) -> dict[str, Any]:
    return await _predict(cache, principal, name, version, body)
