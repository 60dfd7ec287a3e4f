"""Custom Vision's Training API: training a project, its iterations, publishing them under a
name, their performance (per tag and per image) and their exports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from app.api.deps import CustomVisionTrainer, DecodeBudgetDep, ModelCacheDep, SessionDep
from app.api.routes.customvision.training.common import (
    MAX_QUERY_TEXT,
    IterationDep,
    OrderBy,
    ProjectDep,
    TagIds,
    Take,
    csv,
    newest_first,
    page,
)
from app.core.config import get_settings
from app.db.customvision import CvIteration
from app.schemas.customvision import (
    Export,
    ImagePerformance,
    Iteration,
    IterationPerformance,
    IterationUpdate,
)
from app.services.auth import Principal
from app.services.customvision import exports as cv_exports
from app.services.customvision import iterations, performance
from app.services.customvision.errors import CustomVisionError
from app.services.inference import MemoryBudget, ModelCache

router = APIRouter()


@router.post("/projects/{project_id}/train", response_model=Iteration)
async def train_project(
    project: ProjectDep,
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
def get_iterations(project: ProjectDep, session: SessionDep) -> list[Iteration]:
    return [
        iterations.iteration_wire(session, i)
        for i in iterations.list_iterations(session, project=project)
    ]


@router.get("/projects/{project_id}/iterations/{iteration_id}", response_model=Iteration)
def get_iteration(iteration: IterationDep, session: SessionDep) -> Iteration:
    return iterations.iteration_wire(session, iteration)


@router.patch("/projects/{project_id}/iterations/{iteration_id}", response_model=Iteration)
def update_iteration(
    iteration: IterationDep, update: Annotated[IterationUpdate, Body()], session: SessionDep
) -> Iteration:
    """Rename an iteration (its name is all that may change)."""
    if update.name is not None:
        iterations.rename(session, iteration=iteration, name=update.name)
    return iterations.iteration_wire(session, iteration)


@router.delete(
    "/projects/{project_id}/iterations/{iteration_id}", status_code=status.HTTP_204_NO_CONTENT
)
def delete_iteration(iteration: IterationDep, session: SessionDep) -> Response:
    iterations.delete_iteration(session, iteration=iteration)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/projects/{project_id}/iterations/{iteration_id}/publish", response_model=bool)
def publish_iteration(
    project: ProjectDep,
    iteration: IterationDep,
    session: SessionDep,
    publish_name: Annotated[
        str | None, Query(alias="publishName", max_length=MAX_QUERY_TEXT)
    ] = None,
    prediction_id: Annotated[str | None, Query(alias="predictionId", max_length=1024)] = None,
    overwrite: bool = False,
) -> bool:
    """Publish under a name (predictionId, Azure's prediction resource, is only recorded:
    the keys of predict scope of the same owner predict with it)."""
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
def unpublish_iteration(iteration: IterationDep, session: SessionDep) -> Response:
    iterations.unpublish(session, iteration=iteration)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _held_out(
    iteration: CvIteration,
    session: SessionDep,
    principal: Principal,
    cache: ModelCache,
    budget: MemoryBudget,
) -> performance.HeldOut:
    version = await run_in_threadpool(performance.trained_version, session, iteration)
    return await performance.held_out(
        iteration=iteration, version=version, cache=cache, budget=budget, principal=principal
    )


@router.get(
    "/projects/{project_id}/iterations/{iteration_id}/performance",
    response_model=IterationPerformance,
)
async def get_iteration_performance(
    project: ProjectDep,
    iteration: IterationDep,
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
    held_out = await _held_out(iteration, session, principal, cache, budget)
    tags = await run_in_threadpool(
        iterations.trained_tags, session, project=project, iteration=iteration
    )
    return performance.performance(
        held_out, threshold=threshold, tag_ids={t.name: t.id for t in tags}
    )


@router.get(
    "/projects/{project_id}/iterations/{iteration_id}/performance/images",
    response_model=list[ImagePerformance],
)
async def get_image_performances(
    project: ProjectDep,
    iteration: IterationDep,
    request: Request,
    session: SessionDep,
    principal: CustomVisionTrainer,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    tag_ids: TagIds = None,
    order_by: OrderBy = None,
    take: Take = 50,
    skip: Take = 0,
) -> list[ImagePerformance]:
    """The held-out images of the iteration's training, a page at a time, each with its tags
    and the iteration's answer (with `tagIds`, the images that had one of them)."""
    take, skip = page(take, skip)
    newest = newest_first(order_by)
    held_out = await _held_out(iteration, session, principal, cache, budget)
    return await run_in_threadpool(
        lambda: performance.image_performances(
            session,
            project=project,
            iteration=iteration,
            held_out=held_out,
            tag_ids=csv(tag_ids),
            newest_first=newest,
            take=take,
            skip=skip,
            base_url=str(request.base_url),
        )
    )


@router.get(
    "/projects/{project_id}/iterations/{iteration_id}/performance/images/count",
    response_model=int,
)
async def get_image_performance_count(
    project: ProjectDep,
    iteration: IterationDep,
    session: SessionDep,
    principal: CustomVisionTrainer,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    tag_ids: TagIds = None,
) -> int:
    held_out = await _held_out(iteration, session, principal, cache, budget)
    return await run_in_threadpool(
        lambda: performance.image_performance_count(
            session, project=project, iteration=iteration, held_out=held_out, tag_ids=csv(tag_ids)
        )
    )


@router.post("/projects/{project_id}/iterations/{iteration_id}/export", response_model=Export)
def export_iteration(
    iteration: IterationDep,
    request: Request,
    session: SessionDep,
    platform: Annotated[str | None, Query(max_length=40)] = None,
    flavor: Annotated[str | None, Query(max_length=40)] = None,
) -> Export:
    """Ask for the iteration's export: ONNX is Done at once (every model here has one); a
    TensorFlow Lite file is Exporting until a worker has built and checked it. Its download
    link works without a key, as Azure's do."""
    iteration, kind = cv_exports.export(
        session, iteration=iteration, platform=platform, flavor=flavor
    )
    return cv_exports.wire(session, iteration, kind, base_url=str(request.base_url))


@router.get("/projects/{project_id}/iterations/{iteration_id}/export", response_model=list[Export])
def get_exports(iteration: IterationDep, request: Request, session: SessionDep) -> list[Export]:
    return cv_exports.list_exports(session, iteration=iteration, base_url=str(request.base_url))
