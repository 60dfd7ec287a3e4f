"""Custom Vision's Training API: domains, projects and tags (parameters come in the query,
as the SDK sends them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status

from app.api.deps import CustomVisionTrainer, SessionDep
from app.api.routes.customvision.training.common import MAX_QUERY_TEXT, ProjectDep, csv
from app.schemas.customvision import Domain, Project, ProjectUpdate, Tag, TagUpdate
from app.services.customvision import domains, images, iterations, projects
from app.services.customvision.projects import parse_id

router = APIRouter()


@router.get("/domains", response_model=list[Domain])
def get_domains() -> list[Domain]:
    return [domain.wire() for domain in domains.DOMAINS]


@router.get("/domains/{domain_id}", response_model=Domain)
def get_domain(domain_id: str) -> Domain:
    parsed = parse_id(domain_id, code="BadRequestInvalidIds", what="domain id")
    return domains.get_domain(parsed).wire()


@router.get("/projects", response_model=list[Project])
def get_projects(session: SessionDep, principal: CustomVisionTrainer) -> list[Project]:
    return [projects.project_wire(p) for p in projects.list_projects(session, principal=principal)]


@router.post("/projects", response_model=Project)
def create_project(
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
        target_export_platforms=csv(target_export_platforms),
    )
    return projects.project_wire(project)


@router.get("/projects/{project_id}", response_model=Project)
def get_project(project: ProjectDep) -> Project:
    return projects.project_wire(project)


@router.patch("/projects/{project_id}", response_model=Project)
def update_project(
    project: ProjectDep, update: Annotated[ProjectUpdate, Body()], session: SessionDep
) -> Project:
    return projects.project_wire(projects.update_project(session, project=project, update=update))


@router.delete("/projects/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_project(project: ProjectDep, session: SessionDep) -> Response:
    images.remove_files_after_commit(session, project=project)
    projects.delete_project(session, project=project)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/projects/{project_id}/tags", response_model=list[Tag])
def get_tags(
    project: ProjectDep,
    session: SessionDep,
    iteration_id: Annotated[str | None, Query(alias="iterationId", max_length=100)] = None,
) -> list[Tag]:
    """The project's tags with their image counts; with `iterationId`, the tags as that
    iteration trained on them (counts then)."""
    if iteration_id is not None:
        iteration = iterations.get_iteration(session, project=project, iteration_id=iteration_id)
        return iterations.trained_tags(session, project=project, iteration=iteration)
    tags = projects.list_tags(session, project=project)
    counts = projects.image_counts(session, tags=tags)
    return [projects.tag_wire(tag, counts.get(tag.id, 0)) for tag in tags]


@router.post("/projects/{project_id}/tags", response_model=Tag)
def create_tag(
    project: ProjectDep,
    session: SessionDep,
    name: Annotated[str | None, Query(max_length=MAX_QUERY_TEXT)] = None,
    description: Annotated[str | None, Query(max_length=MAX_QUERY_TEXT)] = None,
    type_: Annotated[str | None, Query(alias="type", max_length=100)] = None,
) -> Tag:
    tag = projects.create_tag(
        session, project=project, name=name, description=description, type_=type_
    )
    return projects.tag_wire(tag, 0)


@router.get("/projects/{project_id}/tags/{tag_id}", response_model=Tag)
def get_tag(project: ProjectDep, tag_id: str, session: SessionDep) -> Tag:
    tag = projects.get_tag(session, project=project, tag_id=tag_id)
    return projects.tag_wire(tag, projects.image_counts(session, tags=[tag]).get(tag.id, 0))


@router.patch("/projects/{project_id}/tags/{tag_id}", response_model=Tag)
def update_tag(
    project: ProjectDep, tag_id: str, update: Annotated[TagUpdate, Body()], session: SessionDep
) -> Tag:
    tag = projects.get_tag(session, project=project, tag_id=tag_id)
    tag = projects.update_tag(session, project=project, tag=tag, update=update)
    return projects.tag_wire(tag, projects.image_counts(session, tags=[tag]).get(tag.id, 0))


@router.delete("/projects/{project_id}/tags/{tag_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_tag(project: ProjectDep, tag_id: str, session: SessionDep) -> Response:
    projects.delete_tag(session, tag=projects.get_tag(session, project=project, tag_id=tag_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
