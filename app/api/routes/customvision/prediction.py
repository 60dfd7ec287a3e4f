"""Custom Vision's Prediction API: classify an image with a project's published iteration
(the SDK's CustomVisionPredictionClient, and the portal's "Prediction URL")."""

from __future__ import annotations

import uuid

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from app.api.bodies import (
    ANY_PART,
    json_body_openapi,
    read_body,
    read_json_model,
    receive_files,
)
from app.api.deps import (
    CustomVisionPredictor,
    DecodeBudgetDep,
    ModelCacheDep,
    SessionDep,
    custom_vision_predictor,
)
from app.api.routes.customvision.versions import api_version
from app.core.config import get_settings
from app.core.errors import BadRequestError, UnsupportedMediaTypeError
from app.db.base import utcnow
from app.schemas.customvision import (
    CUSTOM_VISION_RESPONSES,
    ClassifiedImage,
    ImageUrl,
    Prediction,
)
from app.services import inference
from app.services.customvision import iterations, projects
from app.services.customvision import predictions as predictions_store
from app.services.customvision.errors import CustomVisionError
from app.services.customvision.urls import fetch_image
from app.services.inference import ImagePayload

router = APIRouter(
    prefix="/customvision/{api_version}/prediction",
    tags=["custom vision"],
    responses=CUSTOM_VISION_RESPONSES,
    # the key first (before the path's API version is checked): no key, no other answer
    dependencies=[Depends(custom_vision_predictor), Depends(api_version)],
)


async def _image(request: Request) -> bytes:
    """The image: any one multipart part (the SDK's `imageData` has no file name, a browser's
    form names it `image`), or the whole body (application/octet-stream); at most
    `max_custom_vision_prediction_image_bytes` (4 MB, as Azure)."""
    limit = get_settings().max_custom_vision_prediction_image_bytes
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        files, _ = await receive_files(
            request, file_fields=frozenset({ANY_PART}), max_files=1, max_file_bytes=limit
        )
        data = files[0].data if files else b""
    else:
        data = await read_body(request, limit=limit)
    if not data:
        raise CustomVisionError("BadRequestImageStream", "the request has no image")
    return data


async def _image_at_url(request: Request) -> bytes:
    """The image at the URL of the body (`{"url": ...}`), fetched under the SSRF guards."""
    body = await read_json_model(request, ImageUrl)
    settings = get_settings()
    return await run_in_threadpool(
        lambda: fetch_image(
            body.url,
            max_bytes=settings.max_custom_vision_prediction_image_bytes,
            timeout=settings.custom_vision_fetch_timeout_seconds,
            allow_private=settings.custom_vision_fetch_private_urls,
        )
    )


async def classify(
    project_id: str,
    published_name: str | None,
    request: Request,
    session: SessionDep,
    principal: CustomVisionPredictor,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    *,
    keep: bool,
    url: bool = False,
    iteration_id: str | None = None,
) -> ClassifiedImage:
    """Classify the request's image (or, with `url`, the image at the URL its JSON body
    names); with `keep`, store it and the answer where the Training API's query_predictions
    finds them. The iteration: the one published as `published_name`; without one (the
    Training API's quick test), `iteration_id`, else the project's latest trained one."""
    data = await (_image_at_url(request) if url else _image(request))

    def resolve() -> tuple[str, str, int, dict[str, tuple[str, str]]]:
        project = projects.get_project(session, project_id=project_id, principal=principal)
        if published_name is not None:
            iteration = iterations.published(session, project=project, publish_name=published_name)
        elif iteration_id is not None:
            iteration = iterations.get_iteration(
                session, project=project, iteration_id=iteration_id
            )
        else:
            iteration = iterations.latest_trained(session, project=project)
        version = iterations.model_version(session, iteration)
        if version is None:
            raise CustomVisionError("BadRequestIterationIsNotTrained", "it is not trained")
        tags = {t.name: (str(t.id), t.type) for t in projects.list_tags(session, project=project)}
        return str(project.id), str(iteration.id), version, tags

    project, iteration, version, tags = await run_in_threadpool(resolve)
    try:
        result = await inference.predict_images(
            cache=cache,
            budget=budget,
            principal=principal,
            images=[ImagePayload(data=data)],
            model=iterations.model_name_of(project),
            version=version,
        )
    except (BadRequestError, UnsupportedMediaTypeError) as exc:
        raise CustomVisionError("BadRequestImageFormat", exc.detail) from exc
    probabilities = result.probabilities[0]
    if keep:
        await run_in_threadpool(
            lambda: predictions_store.store(
                principal=principal,
                project_id=project,
                version=version,
                classes=result.classes,
                probabilities=probabilities,
                image=ImagePayload(data=data),
            )
        )
    predictions = [
        Prediction(probability=float(p), tag_id=tags[name][0], tag_name=name)
        for name, p in zip(result.classes, probabilities, strict=True)
        if name in tags
    ]
    negative = next(((name, i) for name, (i, kind) in tags.items() if kind == "Negative"), None)
    if negative is not None and result.thresholds is not None:
        # A multi-label model answers each label alone: "none of them" is every label
        # absent, the product of 1 - p (its labels' answers taken as independent). A
        # multiclass model's Negative tag has no probability to give: it is left out.
        none = float(np.prod(1.0 - np.asarray(probabilities, dtype=np.float64)))
        predictions.append(
            Prediction(
                probability=none, tag_id=negative[1], tag_name=negative[0], tag_type="Negative"
            )
        )
    predictions.sort(key=lambda p: p.probability, reverse=True)
    return ClassifiedImage(
        id=str(uuid.uuid4()),
        project=project,
        iteration=iteration,
        created=utcnow(),
        predictions=predictions,
    )


@router.post(
    "/{project_id}/classify/iterations/{published_name}/image", response_model=ClassifiedImage
)
async def classify_image(
    project_id: str,
    published_name: str,
    request: Request,
    session: SessionDep,
    principal: CustomVisionPredictor,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
) -> ClassifiedImage:
    """Classify an image, and store it with its answer (query_predictions finds them)."""
    return await classify(
        project_id, published_name, request, session, principal, cache, budget, keep=True
    )


@router.post(
    "/{project_id}/classify/iterations/{published_name}/image/nostore",
    response_model=ClassifiedImage,
)
async def classify_image_with_no_store(
    project_id: str,
    published_name: str,
    request: Request,
    session: SessionDep,
    principal: CustomVisionPredictor,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
) -> ClassifiedImage:
    """Classify an image, keeping nothing of it."""
    return await classify(
        project_id, published_name, request, session, principal, cache, budget, keep=False
    )


@router.post(
    "/{project_id}/classify/iterations/{published_name}/url",
    response_model=ClassifiedImage,
    openapi_extra=json_body_openapi(ImageUrl),
)
async def classify_image_url(
    project_id: str,
    published_name: str,
    request: Request,
    session: SessionDep,
    principal: CustomVisionPredictor,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
) -> ClassifiedImage:
    """Classify the image at a URL (public addresses only), and store it with its answer."""
    return await classify(
        project_id, published_name, request, session, principal, cache, budget, keep=True, url=True
    )


@router.post(
    "/{project_id}/classify/iterations/{published_name}/url/nostore",
    response_model=ClassifiedImage,
    openapi_extra=json_body_openapi(ImageUrl),
)
async def classify_image_url_with_no_store(
    project_id: str,
    published_name: str,
    request: Request,
    session: SessionDep,
    principal: CustomVisionPredictor,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
) -> ClassifiedImage:
    """Classify the image at a URL (public addresses only), keeping nothing of it."""
    return await classify(
        project_id, published_name, request, session, principal, cache, budget, keep=False, url=True
    )
