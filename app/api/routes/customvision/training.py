"""Custom Vision's Training API: domains, projects and tags (the SDK's
CustomVisionTrainingClient sends these; parameters come in the query, as it sends them)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Body, Depends, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.api.bodies import ANY_PART, json_body_openapi, read_json_model, receive_files
from app.api.deps import (
    CustomVisionTrainer,
    DecodeBudgetDep,
    ModelCacheDep,
    SessionDep,
    custom_vision_trainer,
)
from app.api.routes.customvision import prediction
from app.api.routes.customvision.versions import ApiVersion
from app.core.config import get_settings
from app.db.customvision import CvIteration
from app.schemas.customvision import (
    CUSTOM_VISION_RESPONSES,
    MAX_IMAGES_PER_BATCH,
    MAX_IMAGES_PER_PAGE,
    ClassifiedImage,
    Domain,
    Export,
    Image,
    ImageCreateSummary,
    ImageFileCreateBatch,
    ImageIdCreateBatch,
    ImageTagCreateBatch,
    ImageTagCreateSummary,
    ImageUrl,
    ImageUrlCreateBatch,
    Iteration,
    IterationPerformance,
    IterationUpdate,
    PredictionQueryResult,
    PredictionQueryToken,
    Project,
    ProjectUpdate,
    Tag,
    TagUpdate,
)
from app.services import inference
from app.services.customvision import (
    domains,
    images,
    iterations,
    performance,
    predictions,
    projects,
)
from app.services.customvision.errors import CustomVisionError
from app.services.customvision.projects import parse_id
from app.services.customvision.urls import fetch_image
from app.services.inference import ImagePayload
from app.services.review.images import image_media_type
from models_store import ObjectNotFoundError

router = APIRouter(
    prefix="/customvision/{api_version}/training",
    tags=["custom vision"],
    responses=CUSTOM_VISION_RESPONSES,
    # the key first (before the path's API version is checked): no key, no other answer
    dependencies=[Depends(custom_vision_trainer)],
)

MAX_QUERY_TEXT = 4000  # a name, description or list of ids in a query string


def _csv(value: str | None) -> list[str]:
    """A list the SDK sends comma separated (`targetExportPlatforms=ONNX,CoreML`)."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@router.get("/domains", response_model=list[Domain])
def get_domains(_: ApiVersion, __: CustomVisionTrainer) -> list[Domain]:
    return [domain.wire() for domain in domains.DOMAINS]


@router.get("/domains/{domain_id}", response_model=Domain)
def get_domain(domain_id: str, _: ApiVersion, __: CustomVisionTrainer) -> Domain:
    parsed = parse_id(domain_id, code="BadRequestInvalidIds", what="domain id")
    return domains.get_domain(parsed).wire()


@router.get("/projects", response_model=list[Project])
def get_projects(
    _: ApiVersion, session: SessionDep, principal: CustomVisionTrainer
) -> list[Project]:
    return [projects.project_wire(p) for p in projects.list_projects(session, principal=principal)]


@router.post("/projects", response_model=Project)
def create_project(
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    name: Annotated[str | None, Query(max_length=MAX_QUERY_TEXT)] = None,
    description: Annotated[str | None, Query(max_length=MAX_QUERY_TEXT)] = None,
    domain_id: Annotated[str | None, Query(alias="domainId", max_length=100)] = None,
    classification_type: Annotated[
        str | None, Query(alias="classificationType", max_length=100)
    ] = None,
    target_export_platforms: Annotated[
        str | None, Query(alias="targetExportPlatforms", max_length=MAX_QUERY_TEXT)
    ] = None,
) -> Project:
    project = projects.create_project(
        session,
        principal=principal,
        name=name,
        description=description,
        domain_id=domain_id,
        classification_type=classification_type,
        target_export_platforms=_csv(target_export_platforms),
    )
    return projects.project_wire(project)


@router.get("/projects/{project_id}", response_model=Project)
def get_project(
    project_id: str, _: ApiVersion, session: SessionDep, principal: CustomVisionTrainer
) -> Project:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    return projects.project_wire(project)


@router.patch("/projects/{project_id}", response_model=Project)
def update_project(
    project_id: str,
    update: Annotated[ProjectUpdate, Body()],
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> Project:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    return projects.project_wire(projects.update_project(session, project=project, update=update))


@router.delete("/projects/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_project(
    project_id: str, _: ApiVersion, session: SessionDep, principal: CustomVisionTrainer
) -> Response:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    images.remove_files_after_commit(session, project=project)
    projects.delete_project(session, project=project)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/projects/{project_id}/tags", response_model=list[Tag])
def get_tags(
    project_id: str, _: ApiVersion, session: SessionDep, principal: CustomVisionTrainer
) -> list[Tag]:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    tags = projects.list_tags(session, project=project)
    counts = projects.image_counts(session, tags=tags)
    return [projects.tag_wire(tag, counts.get(tag.id, 0)) for tag in tags]


@router.post("/projects/{project_id}/tags", response_model=Tag)
def create_tag(
    project_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    name: Annotated[str | None, Query(max_length=MAX_QUERY_TEXT)] = None,
    description: Annotated[str | None, Query(max_length=MAX_QUERY_TEXT)] = None,
    type_: Annotated[str | None, Query(alias="type", max_length=100)] = None,
) -> Tag:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    tag = projects.create_tag(
        session, project=project, name=name, description=description, type_=type_
    )
    return projects.tag_wire(tag, 0)


@router.get("/projects/{project_id}/tags/{tag_id}", response_model=Tag)
def get_tag(
    project_id: str, tag_id: str, _: ApiVersion, session: SessionDep, principal: CustomVisionTrainer
) -> Tag:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    tag = projects.get_tag(session, project=project, tag_id=tag_id)
    return projects.tag_wire(tag, projects.image_counts(session, tags=[tag]).get(tag.id, 0))


@router.patch("/projects/{project_id}/tags/{tag_id}", response_model=Tag)
def update_tag(
    project_id: str,
    tag_id: str,
    update: Annotated[TagUpdate, Body()],
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> Tag:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    tag = projects.get_tag(session, project=project, tag_id=tag_id)
    tag = projects.update_tag(session, project=project, tag=tag, update=update)
    return projects.tag_wire(tag, projects.image_counts(session, tags=[tag]).get(tag.id, 0))


@router.delete("/projects/{project_id}/tags/{tag_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_tag(
    project_id: str, tag_id: str, _: ApiVersion, session: SessionDep, principal: CustomVisionTrainer
) -> Response:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    projects.delete_tag(session, tag=projects.get_tag(session, project=project, tag_id=tag_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- images --------------------------------------------------------------------------------

_ORDER = {"newest": True, "oldest": False}


def _page(take: int, skip: int) -> tuple[int, int]:
    if not 0 <= take <= MAX_IMAGES_PER_PAGE or skip < 0:
        raise CustomVisionError(
            "BadRequest", f"take is 0 to {MAX_IMAGES_PER_PAGE} and skip at least 0"
        )
    return take, skip


def _newest_first(order_by: str | None) -> bool:
    if order_by is None:
        return True
    if (newest := _ORDER.get(order_by.lower())) is None:
        raise CustomVisionError("BadRequest", "orderBy is Newest or Oldest")
    return newest


def _summary_response(summary: ImageCreateSummary, successful: bool) -> JSONResponse:
    """200 when every image was added (or was there), 207 with each image's status if not."""
    return JSONResponse(
        summary.model_dump(mode="json", by_alias=True),
        status_code=status.HTTP_200_OK if successful else status.HTTP_207_MULTI_STATUS,
    )


@router.post(
    "/projects/{project_id}/images/files",
    response_model=ImageCreateSummary,
    openapi_extra=json_body_openapi(ImageFileCreateBatch),
)
async def create_images_from_files(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
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

    def add() -> tuple[ImageCreateSummary, bool]:
        project = projects.get_project(session, project_id=project_id, principal=principal)
        return images.add_images(
            session,
            project=project,
            images=new,
            batch_tag_ids=batch.tag_ids or [],
            base_url=str(request.base_url),
        )

    return _summary_response(*await run_in_threadpool(add))


@router.post("/projects/{project_id}/images", response_model=ImageCreateSummary)
async def create_images_from_data(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    tag_ids: Annotated[str | None, Query(alias="tagIds", max_length=MAX_QUERY_TEXT)] = None,
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

    def add() -> tuple[ImageCreateSummary, bool]:
        project = projects.get_project(session, project_id=project_id, principal=principal)
        return images.add_images(
            session,
            project=project,
            images=new,
            batch_tag_ids=_csv(tag_ids),
            base_url=str(request.base_url),
        )

    return _summary_response(*await run_in_threadpool(add))


def _listing(
    project_id: str,
    request: Request,
    session: SessionDep,
    principal: CustomVisionTrainer,
    *,
    tagging: str | None,
    tag_ids: str | None,
    order_by: str | None,
    take: int,
    skip: int,
) -> list[Image]:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    take, skip = _page(take, skip)
    return images.list_images(
        session,
        project=project,
        tagging=tagging,
        tag_ids=_csv(tag_ids),
        newest_first=_newest_first(order_by),
        take=take,
        skip=skip,
        base_url=str(request.base_url),
    )


Take = Annotated[int, Query()]
TagIds = Annotated[str | None, Query(alias="tagIds", max_length=MAX_QUERY_TEXT)]
OrderBy = Annotated[str | None, Query(alias="orderBy", max_length=20)]


@router.get("/projects/{project_id}/images/tagged", response_model=list[Image])
def get_tagged_images(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    tag_ids: TagIds = None,
    order_by: OrderBy = None,
    take: Take = 50,
    skip: Take = 0,
) -> list[Image]:
    return _listing(
        project_id,
        request,
        session,
        principal,
        tagging="Tagged",
        tag_ids=tag_ids,
        order_by=order_by,
        take=take,
        skip=skip,
    )


@router.get("/projects/{project_id}/images/untagged", response_model=list[Image])
def get_untagged_images(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    order_by: OrderBy = None,
    take: Take = 50,
    skip: Take = 0,
) -> list[Image]:
    return _listing(
        project_id,
        request,
        session,
        principal,
        tagging="Untagged",
        tag_ids=None,
        order_by=order_by,
        take=take,
        skip=skip,
    )


@router.get("/projects/{project_id}/images", response_model=list[Image])
def get_images(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    tag_ids: TagIds = None,
    tagging_status: Annotated[str | None, Query(alias="taggingStatus", max_length=20)] = None,
    order_by: OrderBy = None,
    take: Take = 50,
    skip: Take = 0,
) -> list[Image]:
    tagging = None
    if tagging_status is not None:
        tagging = {"all": None, "tagged": "Tagged", "untagged": "Untagged"}.get(
            tagging_status.lower(), "?"
        )
        if tagging == "?":
            raise CustomVisionError("BadRequest", "taggingStatus is All, Tagged or Untagged")
    return _listing(
        project_id,
        request,
        session,
        principal,
        tagging=tagging,
        tag_ids=tag_ids,
        order_by=order_by,
        take=take,
        skip=skip,
    )


def _count(
    project_id: str, session: SessionDep, principal: CustomVisionTrainer, **filters: object
) -> int:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    return images.count_images(session, project=project, **filters)  # type: ignore[arg-type]


@router.get("/projects/{project_id}/images/tagged/count", response_model=int)
def get_tagged_image_count(
    project_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    tag_ids: TagIds = None,
) -> int:
    return _count(project_id, session, principal, tagging="Tagged", tag_ids=_csv(tag_ids))


@router.get("/projects/{project_id}/images/untagged/count", response_model=int)
def get_untagged_image_count(
    project_id: str, _: ApiVersion, session: SessionDep, principal: CustomVisionTrainer
) -> int:
    return _count(project_id, session, principal, tagging="Untagged", tag_ids=[])


@router.get("/projects/{project_id}/images/count", response_model=int)
def get_image_count(
    project_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    tag_ids: TagIds = None,
) -> int:
    return _count(project_id, session, principal, tagging=None, tag_ids=_csv(tag_ids))


@router.get("/projects/{project_id}/images/id", response_model=list[Image])
def get_images_by_ids(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    image_ids: Annotated[str | None, Query(alias="imageIds", max_length=MAX_QUERY_TEXT * 4)] = None,
) -> list[Image]:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    ids = _csv(image_ids)
    if len(ids) > MAX_IMAGES_PER_PAGE:
        raise CustomVisionError("BadRequestInvalidIds", f"at most {MAX_IMAGES_PER_PAGE} imageIds")
    return images.images_by_ids(
        session, project=project, image_ids=ids, base_url=str(request.base_url)
    )


@router.delete("/projects/{project_id}/images", status_code=status.HTTP_204_NO_CONTENT)
def delete_images(
    project_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    image_ids: Annotated[str | None, Query(alias="imageIds", max_length=MAX_QUERY_TEXT * 4)] = None,
    all_images: Annotated[bool, Query(alias="allImages")] = False,
    all_iterations: Annotated[bool, Query(alias="allIterations")] = False,  # noqa: ARG001  (images belong to no iteration here: trainings snapshot them)
) -> Response:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    images.delete_images(session, project=project, image_ids=_csv(image_ids), all_images=all_images)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/projects/{project_id}/images/tags",
    response_model=ImageTagCreateSummary,
    openapi_extra=json_body_openapi(ImageTagCreateBatch),
)
async def create_image_tags(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> ImageTagCreateSummary:
    batch = await read_json_model(request, ImageTagCreateBatch)

    def tag() -> ImageTagCreateSummary:
        project = projects.get_project(session, project_id=project_id, principal=principal)
        return images.add_image_tags(session, project=project, pairs=batch.tags)

    return await run_in_threadpool(tag)


@router.delete("/projects/{project_id}/images/tags", status_code=status.HTTP_204_NO_CONTENT)
def delete_image_tags(
    project_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    image_ids: Annotated[str | None, Query(alias="imageIds", max_length=MAX_QUERY_TEXT * 4)] = None,
    tag_ids: TagIds = None,
) -> Response:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    images.remove_image_tags(
        session, project=project, image_ids=_csv(image_ids), tag_ids=_csv(tag_ids)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/projects/{project_id}/images/{image_id}/original",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}},
)
def get_original_image(
    project_id: str,
    image_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> Response:
    """The image file as it was sent (each Image's originalImageUri; with the key)."""
    project = projects.get_project(session, project_id=project_id, principal=principal)
    image = images.get_image(session, project=project, image_id=image_id)
    try:
        data = images.read_image(image)
    except ObjectNotFoundError:
        raise CustomVisionError(
            "NotFoundImage", f"image {image.id}'s file is gone", status_code=404
        ) from None
    return Response(data, media_type=image_media_type(data))


# --- training, iterations, publishing ----------------------------------------------------------


@router.post("/projects/{project_id}/train", response_model=Iteration)
async def train_project(
    project_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    training_type: Annotated[str | None, Query(alias="trainingType", max_length=20)] = None,
    reserved_budget_in_hours: Annotated[int, Query(alias="reservedBudgetInHours")] = 0,
    force_train: Annotated[bool, Query(alias="forceTrain")] = False,
    notification_email_address: Annotated[  # noqa: ARG001  (no mail is sent from here)
        str | None, Query(alias="notificationEmailAddress", max_length=320)
    ] = None,
) -> Iteration:
    """Snapshot the tagged images as a dataset and start the default training job on them:
    both training types run `auto` (reservedBudgetInHours is recorded)."""

    def train() -> Iteration:
        project = projects.get_project(session, project_id=project_id, principal=principal)
        iteration = iterations.train_project(
            session,
            project=project,
            principal=principal,
            settings=get_settings(),
            training_type=training_type,
            reserved_budget_in_hours=reserved_budget_in_hours,
            force_train=force_train,
        )
        return iterations.iteration_wire(session, iteration)

    return await run_in_threadpool(train)


@router.get("/projects/{project_id}/iterations", response_model=list[Iteration])
def get_iterations(
    project_id: str, _: ApiVersion, session: SessionDep, principal: CustomVisionTrainer
) -> list[Iteration]:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    return [
        iterations.iteration_wire(session, i)
        for i in iterations.list_iterations(session, project=project)
    ]


@router.get("/projects/{project_id}/iterations/{iteration_id}", response_model=Iteration)
def get_iteration(
    project_id: str,
    iteration_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> Iteration:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    iteration = iterations.get_iteration(session, project=project, iteration_id=iteration_id)
    return iterations.iteration_wire(session, iteration)


@router.patch("/projects/{project_id}/iterations/{iteration_id}", response_model=Iteration)
def update_iteration(
    project_id: str,
    iteration_id: str,
    update: Annotated[IterationUpdate, Body()],
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> Iteration:
    """Rename an iteration (its name is all that may change)."""
    project = projects.get_project(session, project_id=project_id, principal=principal)
    iteration = iterations.get_iteration(session, project=project, iteration_id=iteration_id)
    if update.name is not None:
        if not update.name.strip():
            raise CustomVisionError("BadRequestIterationName", "an iteration name is not empty")
        iteration.name = update.name.strip()
        session.flush()
    return iterations.iteration_wire(session, iteration)


@router.delete(
    "/projects/{project_id}/iterations/{iteration_id}", status_code=status.HTTP_204_NO_CONTENT
)
def delete_iteration(
    project_id: str,
    iteration_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> Response:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    iteration = iterations.get_iteration(session, project=project, iteration_id=iteration_id)
    iterations.delete_iteration(session, iteration=iteration)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/projects/{project_id}/iterations/{iteration_id}/publish", response_model=bool)
def publish_iteration(
    project_id: str,
    iteration_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    publish_name: Annotated[
        str | None, Query(alias="publishName", max_length=MAX_QUERY_TEXT)
    ] = None,
    prediction_id: Annotated[str | None, Query(alias="predictionId", max_length=1024)] = None,
    overwrite: bool = False,
) -> bool:
    """Publish under a name (predictionId, Azure's prediction resource, is only recorded:
    the keys of predict scope of the same owner predict with it)."""
    project = projects.get_project(session, project_id=project_id, principal=principal)
    iteration = iterations.get_iteration(session, project=project, iteration_id=iteration_id)
    iterations.publish(
        session,
        project=project,
        iteration=iteration,
        publish_name=publish_name,
        prediction_id=prediction_id,
        overwrite=overwrite,
    )
    return True


@router.delete(
    "/projects/{project_id}/iterations/{iteration_id}/publish",
    status_code=status.HTTP_204_NO_CONTENT,
)
def unpublish_iteration(
    project_id: str,
    iteration_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> Response:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    iteration = iterations.get_iteration(session, project=project, iteration_id=iteration_id)
    iterations.unpublish(session, iteration=iteration)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/projects/{project_id}/iterations/{iteration_id}/performance",
    response_model=IterationPerformance,
)
async def get_iteration_performance(
    project_id: str,
    iteration_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    threshold: float = 0.5,
    overlap_threshold: Annotated[  # noqa: ARG001  (object detection's; not done here)
        float | None, Query(alias="overlapThreshold")
    ] = None,
) -> IterationPerformance:
    """Per-tag precision and recall at `threshold`, and average precision, on the images the
    iteration's training held out (its model answers them once, then this process keeps
    the answers)."""
    if not 0.0 <= threshold <= 1.0:
        raise CustomVisionError("BadRequest", "threshold is 0 to 1")

    def resolve() -> tuple[CvIteration, int, dict[str, str]]:
        project = projects.get_project(session, project_id=project_id, principal=principal)
        iteration = iterations.get_iteration(session, project=project, iteration_id=iteration_id)
        version = iterations.model_version(session, iteration)
        if version is None or iteration.dataset_id is None:
            raise CustomVisionError(
                "BadRequestIterationIsNotTrained", f"iteration {iteration.id} is not trained"
            )
        tags = {t.name: str(t.id) for t in projects.list_tags(session, project=project)}
        return iteration, version, tags

    iteration, version, tag_ids = await run_in_threadpool(resolve)
    held_out = performance.remembered(iteration)
    if held_out is None:
        classes, files, truth = await run_in_threadpool(performance.held_out_images, iteration)
        chunk = get_settings().max_predict_images
        answers = [np.zeros((0, len(classes)))]
        for start in range(0, len(files), chunk):
            result = await inference.predict_images(
                cache=cache,
                budget=budget,
                principal=principal,
                images=[ImagePayload(data=data) for data in files[start : start + chunk]],
                model=iterations.model_name_of(str(iteration.project_id)),
                version=version,
                detect_unknown=False,
            )
            answers.append(result.probabilities)
        held_out = performance.HeldOut(classes, np.concatenate(answers), truth)
        performance.remember(iteration, held_out)
    return performance.performance(held_out, threshold=threshold, tag_ids=tag_ids)


@router.post("/projects/{project_id}/iterations/{iteration_id}/export", response_model=Export)
def export_iteration(
    project_id: str,
    iteration_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    platform: Annotated[str | None, Query(max_length=40)] = None,
    flavor: Annotated[str | None, Query(max_length=40)] = None,
) -> Export:
    """The iteration's ONNX export (every model here has one: it is Done at once), with a
    download link that works without a key, as Azure's do."""
    project = projects.get_project(session, project_id=project_id, principal=principal)
    iteration = iterations.get_iteration(session, project=project, iteration_id=iteration_id)
    iteration = iterations.export(session, iteration=iteration, platform=platform, flavor=flavor)
    return iterations.export_wire(iteration, base_url=str(request.base_url))


@router.get("/projects/{project_id}/iterations/{iteration_id}/export", response_model=list[Export])
def get_exports(
    project_id: str,
    iteration_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> list[Export]:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    iteration = iterations.get_iteration(session, project=project, iteration_id=iteration_id)
    if iteration.export_token is None:
        return []
    return [iterations.export_wire(iteration, base_url=str(request.base_url))]


# --- stored predictions ------------------------------------------------------------------------


@router.post(
    "/projects/{project_id}/predictions/query",
    response_model=PredictionQueryResult,
    openapi_extra=json_body_openapi(PredictionQueryToken),
)
async def query_predictions(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> PredictionQueryResult:
    """The project's stored predictions (classify calls that store), a page at a time."""
    token = await read_json_model(request, PredictionQueryToken)

    def query() -> PredictionQueryResult:
        project = projects.get_project(session, project_id=project_id, principal=principal)
        return predictions.query(
            session,
            project=project,
            principal=principal,
            token=token,
            base_url=str(request.base_url),
        )

    return await run_in_threadpool(query)


@router.get(
    "/projects/{project_id}/predictions/{prediction_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}},
)
def get_prediction_image(
    project_id: str,
    prediction_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> Response:
    """A stored prediction's image (its originalImageUri; with the key)."""
    project = projects.get_project(session, project_id=project_id, principal=principal)
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
    project_id: str,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    ids: Annotated[str | None, Query(max_length=MAX_QUERY_TEXT * 4)] = None,
) -> Response:
    project = projects.get_project(session, project_id=project_id, principal=principal)
    predictions.delete(session, project=project, principal=principal, ids=_csv(ids))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/projects/{project_id}/images/predictions",
    response_model=ImageCreateSummary,
    openapi_extra=json_body_openapi(ImageIdCreateBatch),
)
async def create_images_from_predictions(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> JSONResponse:
    """Stored predictions' images become images of the project, with the tags asked for."""
    batch = await read_json_model(request, ImageIdCreateBatch)

    def add() -> tuple[ImageCreateSummary, bool]:
        project = projects.get_project(session, project_id=project_id, principal=principal)
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

    return _summary_response(*await run_in_threadpool(add))


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
    openapi_extra=json_body_openapi(ImageUrlCreateBatch),
)
async def create_images_from_urls(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> JSONResponse:
    """Images fetched from URLs (public addresses only; at most 64 per call), each with its
    tags; one that cannot be fetched is ErrorSource."""
    batch = await read_json_model(request, ImageUrlCreateBatch)
    if len(batch.images) > MAX_IMAGES_PER_BATCH:
        raise CustomVisionError(
            "BadRequestImageBatch", f"{len(batch.images)} images; at most {MAX_IMAGES_PER_BATCH}"
        )

    def add() -> tuple[ImageCreateSummary, bool]:
        project = projects.get_project(session, project_id=project_id, principal=principal)
        # (fetched before anything is written: no transaction waits on the network)
        fetched_all = [_fetched(entry.url) for entry in batch.images]
        new = []
        for entry, fetched in zip(batch.images, fetched_all, strict=True):
            new.append(
                images.NewImage(
                    data=fetched.data,
                    tag_ids=entry.tag_ids or [],
                    source=entry.url,
                    failed=fetched.failed,
                )
            )
        return images.add_images(
            session,
            project=project,
            images=new,
            batch_tag_ids=batch.tag_ids or [],
            base_url=str(request.base_url),
        )

    return _summary_response(*await run_in_threadpool(add))


# --- quick test ------------------------------------------------------------------------------


@router.post("/projects/{project_id}/quicktest/image", response_model=ClassifiedImage)
async def quick_test_image(
    project_id: str,
    request: Request,
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    iteration_id: Annotated[str | None, Query(alias="iterationId", max_length=100)] = None,
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
    _: ApiVersion,
    session: SessionDep,
    principal: CustomVisionTrainer,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    iteration_id: Annotated[str | None, Query(alias="iterationId", max_length=100)] = None,
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
