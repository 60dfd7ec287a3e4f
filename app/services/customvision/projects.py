"""Custom Vision projects and their tags, as rows of the caller's."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.db.base import utcnow
from app.db.customvision import CvImageTag, CvProject, CvTag
from app.schemas.customvision import (
    MAX_DESCRIPTION_CHARS,
    MAX_NAME_CHARS,
    Project,
    ProjectSettings,
    ProjectUpdate,
    Tag,
    TagUpdate,
)
from app.services.auth import Principal, visible
from app.services.customvision.domains import EXPORT_PLATFORMS, classification_domain
from app.services.customvision.errors import CustomVisionError, not_found

CLASSIFICATION_TYPES = ("Multiclass", "Multilabel")
TAG_TYPES = ("Regular", "Negative")


def _name(value: str | None, *, code: str, what: str) -> str:
    name = (value or "").strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise CustomVisionError(code, f"a {what} name has 1 to {MAX_NAME_CHARS} characters")
    return name


def _description(value: str | None, *, code: str) -> str:
    if value is not None and len(value) > MAX_DESCRIPTION_CHARS:
        raise CustomVisionError(
            code, f"a description has at most {MAX_DESCRIPTION_CHARS} characters"
        )
    return value or ""


def _classification(value: str | None) -> str:
    if value is None:
        return "Multiclass"
    for known in CLASSIFICATION_TYPES:
        if value.lower() == known.lower():
            return known
    raise CustomVisionError(
        "BadRequestProjectUnknownClassification",
        f"classificationType {value!r} is not Multiclass or Multilabel",
    )


def _export_platforms(values: Sequence[str] | None) -> list[str]:
    """The platforms, spelled as Custom Vision spells them (it matches them in any case)."""
    known = {platform.upper(): platform for platform in EXPORT_PLATFORMS}
    platforms = [value for value in values or [] if value]
    if unsupported := [p for p in platforms if p.upper() not in known]:
        raise CustomVisionError(
            "BadRequestProjectUnsupportedExportPlatform",
            f"export platform(s) {', '.join(unsupported)} are not made here; "
            f"this service exports {', '.join(EXPORT_PLATFORMS)}",
        )
    return [known[p.upper()] for p in platforms]


def _domain_id(value: str | None) -> uuid.UUID | None:
    if value is None or value == "":
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CustomVisionError(
            "BadRequestProjectUnknownDomain", f"domainId {value!r} is not a GUID"
        ) from None


def create_project(
    session: Session,
    *,
    principal: Principal,
    name: str | None,
    description: str | None,
    domain_id: str | None,
    classification_type: str | None,
    target_export_platforms: Sequence[str] | None,
) -> CvProject:
    """A new project of the caller's (at most `max_custom_vision_projects` of them)."""
    count = session.scalar(
        select(func.count()).select_from(CvProject).where(CvProject.owner == principal.owner)
    )
    limit = get_settings().max_custom_vision_projects
    if (count or 0) >= limit:
        raise CustomVisionError(
            "BadRequestExceedProjectLimit", f"an owner may have at most {limit} projects"
        )
    project = CvProject(
        owner=principal.owner,
        name=_name(name, code="BadRequestProjectName", what="project"),
        description=_description(description, code="BadRequestProjectDescription"),
        domain_id=classification_domain(_domain_id(domain_id)).id,
        classification_type=_classification(classification_type),
        target_export_platforms=_export_platforms(target_export_platforms),
    )
    session.add(project)
    session.flush()
    return project


def list_projects(session: Session, *, principal: Principal) -> list[CvProject]:
    query = visible(select(CvProject), CvProject.owner, principal)
    return list(session.scalars(query.order_by(CvProject.created_at)))


def parse_id(value: str, *, code: str, what: str) -> uuid.UUID:
    """A GUID of the path or query (Custom Vision's code `code` when it is not one)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CustomVisionError(code, f"{what} {value[:80]!r} is not a GUID") from None


def get_project(session: Session, *, project_id: str, principal: Principal) -> CvProject:
    """The caller's project (NotFoundProject for another owner's, as for none)."""
    parsed = parse_id(project_id, code="BadRequestInvalidIds", what="project id")
    project = session.get(CvProject, parsed)
    if project is None or not principal.can_see(project.owner):
        raise not_found("NotFoundProject", f"no project {parsed}")
    return project


def update_project(session: Session, *, project: CvProject, update: ProjectUpdate) -> CvProject:
    if update.name is not None:
        project.name = _name(update.name, code="BadRequestProjectName", what="project")
    if update.description is not None:
        project.description = _description(update.description, code="BadRequestProjectDescription")
    if (settings := update.settings) is not None:
        if settings.domain_id:
            project.domain_id = classification_domain(_domain_id(settings.domain_id)).id
        if settings.classification_type:
            project.classification_type = _classification(settings.classification_type)
        if "target_export_platforms" in settings.model_fields_set:
            project.target_export_platforms = _export_platforms(settings.target_export_platforms)
    project.last_modified_at = utcnow()
    session.flush()
    return project


def delete_project(session: Session, *, project: CvProject) -> None:
    session.delete(project)
    session.flush()


def project_wire(project: CvProject) -> Project:
    return Project(
        id=str(project.id),
        name=project.name,
        description=project.description,
        settings=ProjectSettings(
            domain_id=str(project.domain_id),
            classification_type=project.classification_type,
            target_export_platforms=list(project.target_export_platforms),
        ),
        created=project.created_at,
        last_modified=project.last_modified_at,
    )


# --- tags ----------------------------------------------------------------------------------


def _tag_type(value: str | None) -> str:
    if value is None:
        return "Regular"
    for known in TAG_TYPES:
        if value.lower() == known.lower():
            return known
    raise CustomVisionError(
        "BadRequestTagType",
        f"tag type {value!r} is not supported here: Regular or Negative "
        "(GeneralProduct is for object detection)",
    )


def _check_tag(
    session: Session, *, project: CvProject, name: str, type_: str, tag_id: uuid.UUID | None
) -> None:
    others = select(CvTag).where(CvTag.project_id == project.id)
    if tag_id is not None:
        others = others.where(CvTag.id != tag_id)
    existing = list(session.scalars(others))
    if any(tag.name.lower() == name.lower() for tag in existing):
        raise CustomVisionError("BadRequestTagNameNotUnique", f"the project has a tag {name!r}")
    if type_ == "Negative" and any(tag.type == "Negative" for tag in existing):
        raise CustomVisionError("BadRequestMultipleNegativeTag", "a project has one Negative tag")


def create_tag(
    session: Session,
    *,
    project: CvProject,
    name: str | None,
    description: str | None,
    type_: str | None,
) -> CvTag:
    count = session.scalar(
        select(func.count()).select_from(CvTag).where(CvTag.project_id == project.id)
    )
    limit = get_settings().max_dataset_classes
    if (count or 0) >= limit:
        raise CustomVisionError(
            "BadRequestExceedTagPerProjectLimit", f"a project may have at most {limit} tags"
        )
    tag = CvTag(
        project_id=project.id,
        name=_name(name, code="BadRequestTagName", what="tag"),
        description=_description(description, code="BadRequestTagDescription"),
        type=_tag_type(type_),
    )
    _check_tag(session, project=project, name=tag.name, type_=tag.type, tag_id=None)
    session.add(tag)
    session.flush()
    return tag


def list_tags(session: Session, *, project: CvProject) -> list[CvTag]:
    query = select(CvTag).where(CvTag.project_id == project.id).order_by(CvTag.created_at)
    return list(session.scalars(query))


def get_tag(session: Session, *, project: CvProject, tag_id: str) -> CvTag:
    parsed = parse_id(tag_id, code="BadRequestInvalidIds", what="tag id")
    tag = session.get(CvTag, parsed)
    if tag is None or tag.project_id != project.id:
        raise not_found("NotFoundTag", f"no tag {parsed} in project {project.id}")
    return tag


def update_tag(session: Session, *, project: CvProject, tag: CvTag, update: TagUpdate) -> CvTag:
    name = _name(update.name, code="BadRequestTagName", what="tag") if update.name else tag.name
    type_ = _tag_type(update.type) if update.type else tag.type
    _check_tag(session, project=project, name=name, type_=type_, tag_id=tag.id)
    tag.name, tag.type = name, type_
    if update.description is not None:
        tag.description = _description(update.description, code="BadRequestTagDescription")
    session.flush()
    return tag


def delete_tag(session: Session, *, tag: CvTag) -> None:
    session.delete(tag)
    session.flush()


def image_counts(session: Session, *, tags: Sequence[CvTag]) -> dict[uuid.UUID, int]:
    """How many images have each tag."""
    if not tags:
        return {}
    rows = session.execute(
        select(CvImageTag.tag_id, func.count())
        .where(CvImageTag.tag_id.in_([tag.id for tag in tags]))
        .group_by(CvImageTag.tag_id)
    )
    return {tag_id: int(count) for tag_id, count in rows}


def tag_wire(tag: CvTag, image_count: int) -> Tag:
    return Tag(
        id=str(tag.id),
        name=tag.name,
        description=tag.description,
        type=tag.type,
        image_count=image_count,
    )
