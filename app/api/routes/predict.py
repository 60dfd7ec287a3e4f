"""`POST /predict`: classify uploaded images (multipart), or base64 images in JSON."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.bodies import (
    json_body_openapi,
    multipart_body_openapi,
    receive_files,
    validate_form,
)
from app.api.deps import DecodeBudgetDep, ModelCacheDep, PredictJSONBody, Predictor
from app.core.config import get_settings
from app.ml.serving import every_label, top_k
from app.schemas.predict import (
    PredictJSONRequest,
    PredictOptions,
    PredictResponse,
)
from app.services import explanations, inference
from app.services.explanations import ExplanationResult
from app.services.inference import ImagePayload, PredictionResult
from app.services.wire import decode_base64

router = APIRouter(tags=["predict"])

IMAGE_FIELDS = frozenset({"file", "files"})

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "corrupt image, or no model named while several are active"},
    404: {"description": "unknown model or version"},
    409: {"description": "no trained model yet, or the model has no active version"},
    413: {"description": "image or request over a limit"},
    415: {"description": "not an image / not multipart"},
}

_PREDICT_FORM = multipart_body_openapi(
    {
        "file": {"type": "string", "format": "binary"},
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "several images for one batch",
        },
    },
    PredictOptions,
)


def _response(result: PredictionResult, filenames: list[str | None], k: int) -> JSONResponse:
    """The PredictResponse as JSON, built directly: validating it as a pydantic model and
    then again as the route's response model took half a millisecond of a 7 ms prediction
    (a profile of /predict); the schema is still the route's response_model."""
    explained_images: list[ExplanationResult | None] = (
        list(result.explanations) if result.explanations else [None] * len(filenames)
    )
    scores: list[float | None] = (
        [None] * len(filenames)
        if result.outlier_scores is None
        else [round(float(score), 6) for score in result.outlier_scores]
    )
    thresholds = result.thresholds

    def labels(row: Any) -> dict[str, Any]:
        if thresholds is None:
            return {"labels": top_k(row, result.classes, k)}
        listed = every_label(row, result.classes, thresholds)
        passed = [entry["label"] for entry in listed if entry["above_threshold"]]
        return {"labels": listed, "labels_above_threshold": passed}

    body = {
        "model": result.version.name,
        "version": result.version.version,
        **({"task": "multilabel"} if thresholds is not None else {}),
        "predictions": [
            {
                "filename": filename,
                **labels(row),
                "unknown": unknown,
                "outlier_score": score,
                "explanation": explained.as_dict() if explained else None,
            }
            for filename, row, unknown, score, explained in zip(
                filenames,
                result.probabilities,
                result.unknown,
                scores,
                explained_images,
                strict=True,
            )
        ],
        "outlier_threshold": result.outlier_threshold,
        "seconds": round(result.seconds, 6),
        "runtime": result.runtime,
    }
    return JSONResponse(body, headers={inference.RUNTIME_HEADER: result.runtime})


@router.post(
    "/predict", response_model=PredictResponse, openapi_extra=_PREDICT_FORM, responses=_ERRORS
)
async def predict(
    request: Request, cache: ModelCacheDep, budget: DecodeBudgetDep, principal: Predictor
) -> JSONResponse:
    """Classify one image (`file`) or a batch (`files`, repeated). Form fields `model`,
    `version` and `top_k` are optional: by default the only active model answers. An image
    unlike every training image is answered `unknown` (its labels still listed), unless
    `detect_unknown=false`; `outlier_threshold` overrides the version's threshold.
    `precision=int8` answers from the version's int8 ONNX export (once its accuracy check
    passed; the version's serving_precision is the default); `runtime` names what ran."""
    settings = get_settings()
    files, fields = await receive_files(
        request,
        file_fields=IMAGE_FIELDS,
        max_files=settings.max_predict_images,
        max_file_bytes=settings.max_image_file_bytes,
    )
    options = validate_form(PredictOptions, fields)
    result = await inference.predict_images(
        cache=cache,
        budget=budget,
        principal=principal,
        images=[ImagePayload(data=f.data, filename=f.filename) for f in files],
        model=options.model,
        version=options.version,
        explain=options.explain,
        detect_unknown=options.detect_unknown,
        outlier_threshold=options.outlier_threshold,
        label_threshold=options.label_threshold,
        precision=options.precision,
    )
    return _response(result, [f.filename for f in files], options.top_k)


@router.post(
    "/predict/json",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=json_body_openapi(PredictJSONRequest),
)
async def predict_json(
    body: PredictJSONBody, cache: ModelCacheDep, budget: DecodeBudgetDep, principal: Predictor
) -> JSONResponse:
    """The same as `POST /predict` for clients that cannot send multipart: images as base64."""
    images = [
        ImagePayload(data=decode_base64(image.b64, what=f"image {i + 1}"), filename=image.filename)
        for i, image in enumerate(body.images)
    ]
    result = await inference.predict_images(
        cache=cache,
        budget=budget,
        principal=principal,
        images=images,
        model=body.model,
        version=body.version,
        explain=body.explain,
        detect_unknown=body.detect_unknown,
        outlier_threshold=body.outlier_threshold,
        label_threshold=body.label_threshold,
        precision=body.precision,
    )
    return _response(result, [image.filename for image in body.images], body.top_k)


@router.get(
    "/explanations/{explanation_id}.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        404: {"description": "no such explanation of yours (or it was removed)"},
    },
)
def explanation_image(explanation_id: uuid.UUID, principal: Predictor) -> Response:
    """A Grad-CAM overlay made by `explain=true`, for the owner of the key that asked."""
    return Response(
        explanations.explanation_png(explanation_id, principal=principal),
        media_type="image/png",
    )
