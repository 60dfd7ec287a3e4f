"""Custom Vision's Training API: quick tests of an iteration, and the stored predictions
(classify calls that store): querying them, their images, deleting them, and making project
images of them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.api.bodies import json_body_openapi, read_json_model
from app.api.deps import CustomVisionTrainer, DecodeBudgetDep, ModelCacheDep, SessionDep
from app.api.routes.customvision import prediction
from app.api.routes.customvision.training.common import (
    IMAGE_CREATE_RESPONSES,
    MAX_ID_LIST_TEXT,
    ProjectDep,
    csv,
    summary_response,
)
from app.schemas.customvision import (
    ClassifiedImage,
    ImageCreateSummary,
    ImageIdCreateBatch,
    ImageUrl,
    PredictionQueryResult,
    PredictionQueryToken,
)
from app.services.customvision import images, predictions
from app.services.customvision.errors import CustomVisionError
from app.services.review.images import image_media_type
from models_store import ObjectNotFoundError

router = APIRouter()

IterationId = Annotated[str | None, Query(alias="iterationId", max_length=100)]


@router.post("/projects/{project_id}/quicktest/image", response_model=ClassifiedImage)
async def quick_test_image(
    project_id: str,
    request: Request,
    session: SessionDep,
    principal: CustomVisionTrainer,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    iteration_id: IterationId = None,
    store: bool = True,
) -> ClassifiedImage:
    """Classify an image with an iteration, published or not (default: the latest trained)."""
    return await prediction.classify(
        project_id,
        None,
        request,
        session,
        principal,
        cache,
        budget,
        keep=store,
        iteration_id=iteration_id,
    )


@router.post(
    "/projects/{project_id}/quicktest/url",
    response_model=ClassifiedImage,
    openapi_extra=json_body_openapi(ImageUrl),
)
async def quick_test_image_url(
    project_id: str,
    request: Request,
    session: SessionDep,
    principal: CustomVisionTrainer,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    iteration_id: IterationId = None,
    store: bool = True,
) -> ClassifiedImage:
    """Classify the image at a URL (public addresses only) with an iteration."""
    return await prediction.classify(
        project_id,
        None,
        request,
        session,
        principal,
        cache,
        budget,
        keep=store,
        url=True,
        iteration_id=iteration_id,
    )


@router.post(
    "/projects/{project_id}/predictions/query",
    response_model=PredictionQueryResult,
    openapi_extra=json_body_openapi(PredictionQueryToken),
)
async def query_predictions(
    project: ProjectDep, request: Request, session: SessionDep, principal: CustomVisionTrainer
) -> PredictionQueryResult:
    """The project's stored predictions (classify calls that store), a page at a time."""
    token = await read_json_model(request, PredictionQueryToken)
    return await run_in_threadpool(
        lambda: predictions.query(
            session,
            project=project,
            principal=principal,
            token=token,
            base_url=str(request.base_url),
        )
    )


@router.get(
    "/projects/{project_id}/predictions/{prediction_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}},
)
def get_prediction_image(
    project: ProjectDep, prediction_id: str, session: SessionDep, principal: CustomVisionTrainer
) -> Response:
    """A stored prediction's image (its originalImageUri; with the key)."""
    item = predictions.get_item(
        session, project=project, principal=principal, prediction_id=prediction_id
    )
    try:
        data = predictions.image_of(item)
    except ObjectNotFoundError:
        raise CustomVisionError("NotFound", "the image is gone", status_code=404) from None
    return Response(data, media_type=image_media_type(data))


@router.delete("/projects/{project_id}/predictions", status_code=status.HTTP_204_NO_CONTENT)
def delete_prediction(
    project: ProjectDep,
    session: SessionDep,
    principal: CustomVisionTrainer,
    ids: Annotated[str | None, Query(max_length=MAX_ID_LIST_TEXT)] = None,
) -> Response:
    predictions.delete(session, project=project, principal=principal, ids=csv(ids))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/projects/{project_id}/images/predictions",
    response_model=ImageCreateSummary,
    responses=IMAGE_CREATE_RESPONSES,
    openapi_extra=json_body_openapi(ImageIdCreateBatch),
)
async def create_images_from_predictions(
    project: ProjectDep, request: Request, session: SessionDep, principal: CustomVisionTrainer
) -> JSONResponse:
    """Stored predictions' images become images of the project, with the tags asked for."""
    batch = await read_json_model(request, ImageIdCreateBatch)

    def add() -> tuple[ImageCreateSummary, bool]:
        new = []
        for entry in batch.images:
            item = predictions.get_item(
                session, project=project, principal=principal, prediction_id=entry.id
            )
            try:
                data: bytes | None = predictions.image_of(item)
            except ObjectNotFoundError:
                data = None
            new.append(images.NewImage(data=data, tag_ids=entry.tag_ids or [], source=entry.id))
        return images.add_images(
            session,
            project=project,
            images=new,
            batch_tag_ids=batch.tag_ids or [],
            base_url=str(request.base_url),
        )

    return summary_response(*await run_in_threadpool(add))
