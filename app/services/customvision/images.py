"""A Custom Vision project's images: added one batch at a time (each image decoded and checked,
stored once per project and content), tagged and untagged, listed in pages, removed."""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Select, delete, exists, func, select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.db.base import utcnow
from app.db.customvision import CvImage, CvImageTag, CvProject, CvTag
from app.db.session import after_commit, after_rollback
from app.ml.images import ImageDecodeError, decode_image
from app.schemas.customvision import (
    MAX_IMAGES_PER_BATCH,
    Image,
    ImageCreateResult,
    ImageCreateSummary,
    ImageTag,
    ImageTagCreateEntry,
    ImageTagCreateSummary,
)
from app.services.customvision.errors import CustomVisionError
from app.services.customvision.projects import parse_id
from app.services.storage import get_storage

# Tags one image may have (Azure's limit).
MAX_TAGS_PER_IMAGE = 100


@dataclass(frozen=True)
class NewImage:
    """An image of a create call: its bytes (None where they could not be read) and tags."""

    data: bytes | None
    tag_ids: Sequence[str]
    source: str | None = None  # its name or URL, as the caller gave it
    # Why its bytes could not be had (a status such as ErrorImageSize); None: see `data`.
    failed: str | None = None


def image_key(project_id: uuid.UUID, sha256: str) -> str:
    return f"{project_id}/{sha256[:2]}/{sha256}"


def read_image(image: CvImage) -> bytes:
    """The image's file as it was sent (ObjectNotFoundError if it is gone)."""
    return get_storage().projects.get_bytes(image_key(image.project_id, image.sha256))


def decode_base64(text: str | None) -> bytes | None:
    """A base64 image of a JSON batch, or None where it is not base64."""
    if not text:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _tags_of(session: Session, project: CvProject, ids: Sequence[str]) -> dict[uuid.UUID, CvTag]:
    """The project's tags of these ids (BadRequestImageTags for one it does not have)."""
    parsed = [parse_id(value, code="BadRequestInvalidIds", what="tag id") for value in ids]
    if not parsed:
        return {}
    found = {
        tag.id: tag
        for tag in session.scalars(
            select(CvTag).where(CvTag.project_id == project.id, CvTag.id.in_(parsed))
        )
    }
    if missing := [str(tag_id) for tag_id in parsed if tag_id not in found]:
        raise CustomVisionError(
            "BadRequestImageTags", f"the project has no tag {', '.join(missing[:5])}"
        )
    return found


def _mixes_negative(tags: Sequence[CvTag]) -> bool:
    types = {tag.type for tag in tags}
    return "Negative" in types and len(tags) > 1


def add_images(
    session: Session,
    *,
    project: CvProject,
    images: Sequence[NewImage],
    batch_tag_ids: Sequence[str] = (),
    base_url: str,
) -> tuple[ImageCreateSummary, bool]:
    """Add a batch (at most MAX_IMAGES_PER_BATCH): each image decoded, sized and stored, or
    given the status that says why not; an image the project has is OKDuplicate (and gets the
    tags asked for). Returns the summary and whether every image was added."""
    settings = get_settings()
    if not images:
        raise CustomVisionError("BadRequestImageBatch", "the batch has no image")
    if len(images) > MAX_IMAGES_PER_BATCH:
        raise CustomVisionError(
            "BadRequestImageBatch",
            f"{len(images)} images in one call; at most {MAX_IMAGES_PER_BATCH}",
        )
    tags = _tags_of(session, project, [*batch_tag_ids, *(t for i in images for t in i.tag_ids)])
    count = (
        session.scalar(
            select(func.count()).select_from(CvImage).where(CvImage.project_id == project.id)
        )
        or 0
    )
    results: list[ImageCreateResult] = []
    stored: list[str] = []
    for new in images:
        wanted = list(
            dict.fromkeys(
                parse_id(t, code="BadRequestInvalidIds", what="tag id")
                for t in [*batch_tag_ids, *new.tag_ids]
            )
        )
        image_tags = [tags[t] for t in wanted]
        status, image = _add_one(
            session,
            project=project,
            new=new,
            tags=image_tags,
            room=settings.max_dataset_images - count,
            max_bytes=settings.max_custom_vision_training_image_bytes,
            max_pixels=settings.max_image_pixels,
            stored=stored,
        )
        count += status == "OK"
        results.append(
            ImageCreateResult(
                source_url=new.source,
                status=status,
                image=None if image is None else image_wire(session, image, base_url=base_url),
            )
        )
    # (files stored for rows that do not commit would be stray: they go with the rollback)
    after_rollback(session, _remover(stored))
    project.last_modified_at = utcnow()
    session.flush()
    successful = all(r.status in ("OK", "OKDuplicate") for r in results)
    return ImageCreateSummary(is_batch_successful=successful, images=results), successful


def _add_one(
    session: Session,
    *,
    project: CvProject,
    new: NewImage,
    tags: list[CvTag],
    room: int,
    max_bytes: int,
    max_pixels: int,
    stored: list[str],
) -> tuple[str, CvImage | None]:
    if new.failed is not None:
        return new.failed, None
    if new.data is None:
        return "ErrorSource", None
    if len(new.data) > max_bytes:
        return "ErrorImageSize", None
    if len(tags) > MAX_TAGS_PER_IMAGE:
        return "ErrorTagLimitExceed", None
    if _mixes_negative(tags):
        return "ErrorNegativeAndRegularTagOnSameImage", None
    digest = hashlib.sha256(new.data).hexdigest()
    existing = session.scalar(
        select(CvImage).where(CvImage.project_id == project.id, CvImage.sha256 == digest)
    )
    if existing is not None:
        current = _image_tags(session, [existing.id])[existing.id]
        if _mixes_negative([*current, *tags]):
            return "ErrorNegativeAndRegularTagOnSameImage", None
        have = {t.id for t in current}
        for tag in tags:
            if tag.id not in have:
                session.add(CvImageTag(image_id=existing.id, tag_id=tag.id))
        return "OKDuplicate", existing
    if room <= 0:
        return "ErrorLimitExceed", None
    try:
        decoded = decode_image(new.data, max_pixels=max_pixels)
    except ImageDecodeError:
        return "ErrorImageFormat", None
    image = CvImage(
        project_id=project.id,
        sha256=digest,
        width=decoded.width,
        height=decoded.height,
        size_bytes=len(new.data),
    )
    session.add(image)
    session.flush()
    for tag in tags:
        session.add(CvImageTag(image_id=image.id, tag_id=tag.id))
    key = image_key(project.id, digest)
    store = get_storage().projects
    if not store.exists(key):
        store.put_bytes(key, new.data)
        stored.append(key)
    return "OK", image


def _image_tags(session: Session, image_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[CvTag]]:
    by_image: dict[uuid.UUID, list[CvTag]] = defaultdict(list)
    if not image_ids:
        return by_image
    rows = session.execute(
        select(CvImageTag.image_id, CvTag)
        .join(CvTag, CvTag.id == CvImageTag.tag_id)
        .where(CvImageTag.image_id.in_(list(image_ids)))
        .order_by(CvTag.name)
    )
    for image_id, tag in rows:
        by_image[image_id].append(tag)
    return by_image


def image_wire(
    session: Session, image: CvImage, *, base_url: str, tags: list[CvTag] | None = None
) -> Image:
    if tags is None:
        tags = _image_tags(session, [image.id])[image.id]
    # (Azure's are links to its storage; here the file comes from this route, with the key)
    project = f"{base_url.rstrip('/')}/customvision/v3.3/training/projects/{image.project_id}"
    uri = f"{project}/images/{image.id}/original"
    return Image(
        id=str(image.id),
        created=image.created_at,
        width=image.width,
        height=image.height,
        resized_image_uri=uri,
        thumbnail_uri=uri,
        original_image_uri=uri,
        tags=[ImageTag(tag_id=str(t.id), tag_name=t.name, created=image.created_at) for t in tags]
        or None,
    )


def _filtered(
    project: CvProject, *, tagging: str | None, tag_ids: Sequence[uuid.UUID]
) -> Select[tuple[CvImage]]:
    query = select(CvImage).where(CvImage.project_id == project.id)
    has_tag = exists().where(CvImageTag.image_id == CvImage.id)
    if tagging == "Untagged":
        query = query.where(~has_tag)
    elif tagging == "Tagged" or tag_ids:
        query = query.where(has_tag)
    if tag_ids:
        query = query.where(
            exists().where(CvImageTag.image_id == CvImage.id, CvImageTag.tag_id.in_(tag_ids))
        )
    return query


def list_images(
    session: Session,
    *,
    project: CvProject,
    tagging: str | None,
    tag_ids: Sequence[str],
    newest_first: bool,
    take: int,
    skip: int,
    base_url: str,
) -> list[Image]:
    """A page of the project's images (tagged, untagged or all; with any of `tag_ids`)."""
    parsed = [parse_id(t, code="BadRequestInvalidIds", what="tag id") for t in tag_ids]
    order = CvImage.created_at.desc() if newest_first else CvImage.created_at.asc()
    query = _filtered(project, tagging=tagging, tag_ids=parsed)
    images = list(session.scalars(query.order_by(order, CvImage.id).offset(skip).limit(take)))
    tags = _image_tags(session, [image.id for image in images])
    return [image_wire(session, i, base_url=base_url, tags=tags[i.id]) for i in images]


def count_images(
    session: Session, *, project: CvProject, tagging: str | None, tag_ids: Sequence[str]
) -> int:
    parsed = [parse_id(t, code="BadRequestInvalidIds", what="tag id") for t in tag_ids]
    query = _filtered(project, tagging=tagging, tag_ids=parsed)
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def images_by_ids(
    session: Session, *, project: CvProject, image_ids: Sequence[str], base_url: str
) -> list[Image]:
    parsed = [parse_id(i, code="BadRequestInvalidIds", what="image id") for i in image_ids]
    found = session.scalars(
        select(CvImage).where(CvImage.project_id == project.id, CvImage.id.in_(parsed))
    )
    images = list(found)
    tags = _image_tags(session, [image.id for image in images])
    return [image_wire(session, i, base_url=base_url, tags=tags[i.id]) for i in images]


def get_image(session: Session, *, project: CvProject, image_id: str) -> CvImage:
    parsed = parse_id(image_id, code="BadRequestInvalidIds", what="image id")
    image = session.get(CvImage, parsed)
    if image is None or image.project_id != project.id:
        raise CustomVisionError("NotFoundImage", f"no image {parsed}", status_code=404)
    return image


def delete_images(
    session: Session, *, project: CvProject, image_ids: Sequence[str], all_images: bool
) -> int:
    """Remove images (and, once that has committed, their files no image still uses)."""
    query = select(CvImage).where(CvImage.project_id == project.id)
    if not all_images:
        if not image_ids:
            raise CustomVisionError("BadRequestInvalidIds", "name the imageIds, or allImages")
        parsed = [parse_id(i, code="BadRequestInvalidIds", what="image id") for i in image_ids]
        query = query.where(CvImage.id.in_(parsed))
    images = list(session.scalars(query))
    keys = [image_key(project.id, image.sha256) for image in images]
    for image in images:
        session.delete(image)
    project.last_modified_at = utcnow()
    session.flush()
    after_commit(session, _remover(keys))
    return len(images)


def _remover(keys: list[str]) -> Callable[[], None]:
    def remove() -> None:
        store = get_storage().projects
        for key in keys:
            store.delete(key)

    return remove


def add_image_tags(
    session: Session, *, project: CvProject, pairs: Sequence[ImageTagCreateEntry]
) -> ImageTagCreateSummary:
    """Tag images: each pair created, duplicated (it was there) or exceeded (the image has
    MAX_TAGS_PER_IMAGE tags, or it would mix the Negative tag with others)."""
    tags = _tags_of(session, project, [pair.tag_id for pair in pairs])
    image_ids = [parse_id(p.image_id, code="BadRequestInvalidIds", what="image id") for p in pairs]
    images = {
        image.id
        for image in session.scalars(
            select(CvImage).where(CvImage.project_id == project.id, CvImage.id.in_(image_ids))
        )
    }
    if missing := [str(i) for i in image_ids if i not in images]:
        raise CustomVisionError(
            "NotFoundImage", f"no image {', '.join(missing[:5])}", status_code=404
        )
    current = _image_tags(session, image_ids)
    summary = ImageTagCreateSummary()
    for pair, image_id in zip(pairs, image_ids, strict=True):
        tag = tags[parse_id(pair.tag_id, code="BadRequestInvalidIds", what="tag id")]
        have = current[image_id]
        if any(t.id == tag.id for t in have):
            summary.duplicated.append(pair)
        elif len(have) >= MAX_TAGS_PER_IMAGE or _mixes_negative([*have, tag]):
            summary.exceeded.append(pair)
        else:
            session.add(CvImageTag(image_id=image_id, tag_id=tag.id))
            have.append(tag)
            summary.created.append(pair)
    project.last_modified_at = utcnow()
    session.flush()
    return summary


def remove_image_tags(
    session: Session, *, project: CvProject, image_ids: Sequence[str], tag_ids: Sequence[str]
) -> None:
    images = [parse_id(i, code="BadRequestInvalidIds", what="image id") for i in image_ids]
    tags = list(_tags_of(session, project, tag_ids))
    session.execute(
        delete(CvImageTag).where(CvImageTag.image_id.in_(images), CvImageTag.tag_id.in_(tags))
    )
    project.last_modified_at = utcnow()
    session.flush()


def remove_files_after_commit(session: Session, *, project: CvProject) -> None:
    """Once the project's removal has committed, its image files go too (its rows cascade)."""
    digests = session.scalars(select(CvImage.sha256).where(CvImage.project_id == project.id))
    after_commit(session, _remover([image_key(project.id, digest) for digest in digests]))
