"""Custom Vision's Training API: a project's images (from files, multipart data or URLs),
their listings and counts, their tags and their original files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.api.bodies import ANY_PART, json_body_openapi, read_json_model, receive_files
from app.api.deps import SessionDep
from app.api.routes.customvision.training.common import (
    IMAGE_CREATE_RESPONSES,
    ImageIds,
    OrderBy,
    ProjectDep,
    TagIds,
    Take,
    csv,
    newest_first,
    page,
    summary_response,
)
from app.core.config import get_settings
from app.db.customvision import CvProject
from app.schemas.customvision import (
    MAX_IMAGES_PER_BATCH,
    MAX_IMAGES_PER_PAGE,
    Image,
    ImageCreateSummary,
    ImageFileCreateBatch,
    ImageTagCreateBatch,
    ImageTagCreateSummary,
    ImageUrlCreateBatch,
)
from app.services.customvision import images
from app.services.customvision.errors import CustomVisionError
from app.services.customvision.urls import fetch_image
from app.services.review.images import image_media_type
from models_store import ObjectNotFoundError

router = APIRouter()


async def _add(
    session: SessionDep,
    *,
    project: CvProject,
    new: list[images.NewImage],
    batch_tag_ids: list[str],
    request: Request,
) -> JSONResponse:
    summary, successful = await run_in_threadpool(
        lambda: images.add_images(
            session,
            project=project,
            images=new,
            batch_tag_ids=batch_tag_ids,
            base_url=str(request.base_url),
        )
    )
    return summary_response(summary, successful)


@router.post(
    "/projects/{project_id}/images/files",
    response_model=ImageCreateSummary,
    responses=IMAGE_CREATE_RESPONSES,
    openapi_extra=json_body_openapi(ImageFileCreateBatch),
)
async def create_images_from_files(
    project: ProjectDep, request: Request, session: SessionDep
) -> JSONResponse:
    """Images as base64 in a JSON batch (at most 64), each with its tags."""
    batch = await read_json_model(request, ImageFileCreateBatch)
    new = [
        images.NewImage(
            data=images.decode_base64(entry.contents),
            tag_ids=entry.tag_ids or [],
            source=entry.name,
        )
        for entry in batch.images
    ]
    return await _add(
        session, project=project, new=new, batch_tag_ids=batch.tag_ids or [], request=request
    )


@router.post(
    "/projects/{project_id}/images",
    response_model=ImageCreateSummary,
    responses=IMAGE_CREATE_RESPONSES,
)
async def create_images_from_data(
    project: ProjectDep, request: Request, session: SessionDep, tag_ids: TagIds = None
) -> JSONResponse:
    """Images as multipart parts (the SDK sends one, `imageData`, without a file name; any
    part name is taken), each tagged with `tagIds`."""
    settings = get_settings()
    files, _fields = await receive_files(
        request,
        file_fields=frozenset({ANY_PART}),
        max_files=MAX_IMAGES_PER_BATCH,
        max_file_bytes=settings.max_custom_vision_training_image_bytes,
    )
    new = [images.NewImage(data=f.data, tag_ids=[], source=f.filename) for f in files]
    return await _add(
        session, project=project, new=new, batch_tag_ids=csv(tag_ids), request=request
    )


def _fetched(url: str) -> images.NewImage:
    """The image at a URL of a create batch, or the status that says why it is not there."""
    settings = get_settings()
    try:
        data = fetch_image(
            url,
            max_bytes=settings.max_custom_vision_training_image_bytes,
            timeout=settings.custom_vision_fetch_timeout_seconds,
            allow_private=settings.custom_vision_fetch_private_urls,
        )
    except CustomVisionError as exc:
        failed = "ErrorImageSize" if exc.code == "BadRequestImageSizeBytes" else "ErrorSource"
        return images.NewImage(data=None, tag_ids=[], source=url, failed=failed)
    return images.NewImage(data=data, tag_ids=[], source=url)


@router.post(
    "/projects/{project_id}/images/urls",
    response_model=ImageCreateSummary,
    responses=IMAGE_CREATE_RESPONSES,
    openapi_extra=json_body_openapi(ImageUrlCreateBatch),
)
async def create_images_from_urls(
    project: ProjectDep, request: Request, session: SessionDep
) -> JSONResponse:
    """Images fetched from URLs (public addresses only; at most 64 per call), each with its
    tags; one that cannot be fetched is ErrorSource."""
    batch = await read_json_model(request, ImageUrlCreateBatch)
    if len(batch.images) > MAX_IMAGES_PER_BATCH:
        raise CustomVisionError(
            "BadRequestImageBatch", f"{len(batch.images)} images; at most {MAX_IMAGES_PER_BATCH}"
        )
    # (fetched before anything is written: no transaction waits on the network)
    fetched = await run_in_threadpool(lambda: [_fetched(entry.url) for entry in batch.images])
    new = [
        images.NewImage(
            data=image.data, tag_ids=entry.tag_ids or [], source=entry.url, failed=image.failed
        )
        for entry, image in zip(batch.images, fetched, strict=True)
    ]
    return await _add(
        session, project=project, new=new, batch_tag_ids=batch.tag_ids or [], request=request
    )


def _listing(
    project: CvProject,
    request: Request,
    session: SessionDep,
    *,
    tagging: str | None,
    tag_ids: str | None,
    order_by: str | None,
    take: int,
    skip: int,
) -> list[Image]:
    take, skip = page(take, skip)
    return images.list_images(
        session,
        project=project,
        tagging=tagging,
        tag_ids=csv(tag_ids),
        newest_first=newest_first(order_by),
        take=take,
        skip=skip,
        base_url=str(request.base_url),
    )


@router.get("/projects/{project_id}/images/tagged", response_model=list[Image])
def get_tagged_images(
    project: ProjectDep,
    request: Request,
    session: SessionDep,
    tag_ids: TagIds = None,
    order_by: OrderBy = None,
    take: Take = 50,
    skip: Take = 0,
) -> list[Image]:
    return _listing(
        project,
        request,
        session,
        tagging="Tagged",
        tag_ids=tag_ids,
        order_by=order_by,
        take=take,
        skip=skip,
    )


@router.get("/projects/{project_id}/images/untagged", response_model=list[Image])
def get_untagged_images(
    project: ProjectDep,
    request: Request,
    session: SessionDep,
    order_by: OrderBy = None,
    take: Take = 50,
    skip: Take = 0,
) -> list[Image]:
    return _listing(
        project,
        request,
        session,
        tagging="Untagged",
        tag_ids=None,
        order_by=order_by,
        take=take,
        skip=skip,
    )


_TAGGING_STATUS = {"all": None, "tagged": "Tagged", "untagged": "Untagged"}


@router.get("/projects/{project_id}/images", response_model=list[Image])
def get_images(
    project: ProjectDep,
    request: Request,
    session: SessionDep,
    tag_ids: TagIds = None,
    tagging_status: Annotated[str | None, Query(alias="taggingStatus", max_length=20)] = None,
    order_by: OrderBy = None,
    take: Take = 50,
    skip: Take = 0,
) -> list[Image]:
    tagging = None
    if tagging_status is not None:
        if tagging_status.lower() not in _TAGGING_STATUS:
            raise CustomVisionError("BadRequest", "taggingStatus is All, Tagged or Untagged")
        tagging = _TAGGING_STATUS[tagging_status.lower()]
    return _listing(
        project,
        request,
        session,
        tagging=tagging,
        tag_ids=tag_ids,
        order_by=order_by,
        take=take,
        skip=skip,
    )


@router.get("/projects/{project_id}/images/tagged/count", response_model=int)
def get_tagged_image_count(project: ProjectDep, session: SessionDep, tag_ids: TagIds = None) -> int:
    return images.count_images(session, project=project, tagging="Tagged", tag_ids=csv(tag_ids))


@router.get("/projects/{project_id}/images/untagged/count", response_model=int)
def get_untagged_image_count(project: ProjectDep, session: SessionDep) -> int:
    return images.count_images(session, project=project, tagging="Untagged", tag_ids=[])


@router.get("/projects/{project_id}/images/count", response_model=int)
def get_image_count(project: ProjectDep, session: SessionDep, tag_ids: TagIds = None) -> int:
    return images.count_images(session, project=project, tagging=None, tag_ids=csv(tag_ids))


@router.get("/projects/{project_id}/images/id", response_model=list[Image])
def get_images_by_ids(
    project: ProjectDep, request: Request, session: SessionDep, image_ids: ImageIds = None
) -> list[Image]:
    ids = csv(image_ids)
    if len(ids) > MAX_IMAGES_PER_PAGE:
        raise CustomVisionError("BadRequestInvalidIds", f"at most {MAX_IMAGES_PER_PAGE} imageIds")
    return images.images_by_ids(
        session, project=project, image_ids=ids, base_url=str(request.base_url)
    )


@router.delete("/projects/{project_id}/images", status_code=status.HTTP_204_NO_CONTENT)
def delete_images(
    project: ProjectDep,
    session: SessionDep,
    image_ids: ImageIds = None,
    all_images: Annotated[bool, Query(alias="allImages")] = False,
    all_iterations: Annotated[bool, Query(alias="allIterations")] = False,  # noqa: ARG001  (images belong to no iteration here: trainings snapshot them)
) -> Response:
    images.delete_images(session, project=project, image_ids=csv(image_ids), all_images=all_images)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/projects/{project_id}/images/tags",
    response_model=ImageTagCreateSummary,
    openapi_extra=json_body_openapi(ImageTagCreateBatch),
)
async def create_image_tags(
    project: ProjectDep, request: Request, session: SessionDep
) -> ImageTagCreateSummary:
    batch = await read_json_model(request, ImageTagCreateBatch)
    return await run_in_threadpool(
        lambda: images.add_image_tags(session, project=project, pairs=batch.tags)
    )


@router.delete("/projects/{project_id}/images/tags", status_code=status.HTTP_204_NO_CONTENT)
def delete_image_tags(
    project: ProjectDep, session: SessionDep, image_ids: ImageIds = None, tag_ids: TagIds = None
) -> Response:
    images.remove_image_tags(
        session, project=project, image_ids=csv(image_ids), tag_ids=csv(tag_ids)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/projects/{project_id}/images/{image_id}/original",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}},
)
def get_original_image(project: ProjectDep, image_id: str, session: SessionDep) -> Response:
    """The image file as it was sent (each Image's originalImageUri; with the key)."""
    image = images.get_image(session, project=project, image_id=image_id)
    try:
        data = images.read_image(image)
    except ObjectNotFoundError:
        raise CustomVisionError(
            "NotFoundImage", f"image {image.id}'s file is gone", status_code=404
        ) from None
    return Response(data, media_type=image_media_type(data))
