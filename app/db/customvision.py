"""The tables behind the Azure Custom Vision compatible API: a project is a set of images and
tags that changes (each training snapshots it as a dataset version), an iteration is a model
version, and a published name points at an iteration."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, utcnow


def _new_id() -> uuid.UUID:
    return uuid.uuid4()


class CvProject(Base):
    __tablename__ = "cv_projects"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    # As every owned row (app.db.models): only the owner's keys, or an admin's, see it.
    owner: Mapped[str | None] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    domain_id: Mapped[uuid.UUID] = mapped_column()
    classification_type: Mapped[str] = mapped_column(String(16))  # Multiclass or Multilabel
    target_export_platforms: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # The dataset lineage its trainings made (each one a version of it); None before the first.
    lineage_id: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_modified_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CvTag(Base):
    __tablename__ = "cv_tags"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("cv_projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(16), default="Regular")  # Regular or Negative
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CvImage(Base):
    """An image of a project: its file is stored once per project and content (sha256)."""

    __tablename__ = "cv_images"
    __table_args__ = (
        UniqueConstraint("project_id", "sha256"),
        Index("ix_cv_images_project_id_created_at", "project_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cv_projects.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CvImageTag(Base):
    __tablename__ = "cv_image_tags"

    image_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("cv_images.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("cv_tags.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CvIteration(Base):
    """One training of a project: the training job, the dataset version it snapshotted and,
    once trained, the model version it registered; `publish_name` makes it answer prediction
    calls under that name."""

    __tablename__ = "cv_iterations"
    __table_args__ = (UniqueConstraint("project_id", "publish_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("cv_projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL")
    )
    dataset_id: Mapped[uuid.UUID | None] = mapped_column()
    training_type: Mapped[str] = mapped_column(String(16), default="Regular")
    reserved_budget_in_hours: Mapped[int] = mapped_column(Integer, default=0)
    domain_id: Mapped[uuid.UUID] = mapped_column()
    classification_type: Mapped[str] = mapped_column(String(16))
    publish_name: Mapped[str | None] = mapped_column(String(200))
    prediction_resource_id: Mapped[str | None] = mapped_column(String(1024))
    # The secret part of its export's download link (as Azure's are signed storage links, it
    # works without a key); None until an export is asked for.
    export_token: Mapped[str | None] = mapped_column(String(64), unique=True)
    # What the training reported (the job's result), kept when the job row goes.
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_modified_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
