"""What every Training API route shares: the project and iteration of the path (looked up for
the caller's owner, after the key and the API version), and the query lists and pages the
SDK sends."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, status
from fastapi.responses import JSONResponse

from app.api.deps import CustomVisionTrainer, SessionDep
from app.db.customvision import CvIteration, CvProject
from app.schemas.customvision import MAX_IMAGES_PER_PAGE, ImageCreateSummary
from app.services.customvision import iterations, projects
from app.services.customvision.errors import CustomVisionError

MAX_QUERY_TEXT = 4000  # a name, description or list of ids in a query string
MAX_ID_LIST_TEXT = MAX_QUERY_TEXT * 4  # a comma separated list of up to 256 GUIDs


def project_of(
    project_id: Annotated[str, Path(max_length=100)],
    session: SessionDep,
    principal: CustomVisionTrainer,
) -> CvProject:
    return projects.get_project(session, project_id=project_id, principal=principal)


ProjectDep = Annotated[CvProject, Depends(project_of)]


def iteration_of(
    iteration_id: Annotated[str, Path(max_length=100)], project: ProjectDep, session: SessionDep
) -> CvIteration:
    return iterations.get_iteration(session, project=project, iteration_id=iteration_id)


IterationDep = Annotated[CvIteration, Depends(iteration_of)]


def csv(value: str | None) -> list[str]:
    """A list the SDK sends comma separated (`targetExportPlatforms=ONNX,CoreML`)."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


Take = Annotated[int, Query()]
TagIds = Annotated[str | None, Query(alias="tagIds", max_length=MAX_QUERY_TEXT)]
ImageIds = Annotated[str | None, Query(alias="imageIds", max_length=MAX_ID_LIST_TEXT)]
OrderBy = Annotated[str | None, Query(alias="orderBy", max_length=20)]

_ORDER = {"newest": True, "oldest": False}


def page(take: int, skip: int) -> tuple[int, int]:
    if not 0 <= take <= MAX_IMAGES_PER_PAGE or skip < 0:
        raise CustomVisionError(
            "BadRequest", f"take is 0 to {MAX_IMAGES_PER_PAGE} and skip at least 0"
        )
    return take, skip


def newest_first(order_by: str | None) -> bool:
    if order_by is None:
        return True
    if (newest := _ORDER.get(order_by.lower())) is None:
        raise CustomVisionError("BadRequest", "orderBy is Newest or Oldest")
    return newest


# An image batch's answers: 200 when every image was added, 207 when some were not.
IMAGE_CREATE_RESPONSES: dict[int | str, dict[str, object]] = {
    207: {"model": ImageCreateSummary, "description": "not every image was added: see each"}
}


def summary_response(summary: ImageCreateSummary, successful: bool) -> JSONResponse:
    """200 when every image was added (or was there), 207 with each image's status if not."""
    return JSONResponse(
        summary.model_dump(mode="json", by_alias=True),
        status_code=status.HTTP_200_OK if successful else status.HTTP_207_MULTI_STATUS,
    )
