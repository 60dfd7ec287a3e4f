"""The SQL store: datasets, training jobs, their per-epoch metrics, and versioned models."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql import text

from app.db.base import Base, JSONType, UTCDateTime, utcnow


class DatasetStatus(enum.StrEnum):
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


# What a job does: one of the training methods (app.ml.config.Method), or this check of a
# worker's environment (TensorFlow, devices, weight files) without training.
WORKER_CHECK = "worker_check"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


# A running job's progress reaches 1.0 in the very transaction that registers its model
# version (training reports at most 0.99): from then on it can no longer be cancelled.
REGISTERED_PROGRESS = 1.0


def _new_id() -> uuid.UUID:
    return uuid.uuid4()


class ApiKey(Base):
    """A client's key. Only a hash of its secret is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    name: Mapped[str] = mapped_column(String(200))
    # The user (account) the key acts for: keys with the same owner share their data.
    owner: Mapped[str] = mapped_column(String(200), index=True)
    # The public part of the key ("sv_<prefix>_<secret>"), to find the row without the secret.
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


def _owner_column() -> Mapped[str | None]:
    """The owner of the key that created a row: only that owner's keys (or an admin key) see
    it. NULL for rows made without a key (by an admin tool), which only admins see."""
    return mapped_column(String(200), index=True)


class Dataset(Base):
    """One immutable version of a dataset: its images are fixed once ingested. Adding or
    removing images makes a new row (the next `version` of the same `lineage_id`) with its own
    manifest and fingerprint, so every job can say exactly which images it trained on."""

    __tablename__ = "datasets"
    __table_args__ = (
        # An index rather than a constraint: SQLite adds it without rebuilding the table.
        Index("uq_datasets_lineage_id_version", "lineage_id", "version", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    owner: Mapped[str | None] = _owner_column()
    name: Mapped[str] = mapped_column(String(200))
    # The id of the lineage's first version (its own id for an upload) and of the version this
    # one was made from. Not foreign keys: a version keeps its lineage when an earlier version
    # is deleted (it holds its own copy of every image).
    lineage_id: Mapped[uuid.UUID] = mapped_column(index=True)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    parent_id: Mapped[uuid.UUID | None] = mapped_column()
    # What this version changed from its parent: images added and removed per class (and per
    # split). NULL for an upload.
    diff: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # sha256 over the sorted (split, class, image sha256) triples: same content, same fingerprint.
    fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default=DatasetStatus.PROCESSING)
    class_names: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # multiclass (one class per image) or multilabel (any number of labels per image)
    task: Mapped[str] = mapped_column(String(16), default="multiclass", server_default="multiclass")
    # {"train": {"cats": 1000, ...}, "validation": {...}, "test": {...}}
    split_counts: Mapped[dict[str, dict[str, int]]] = mapped_column(JSONType, default=dict)
    # image size distribution, skipped files, duplicates, warnings
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    jobs: Mapped[list[TrainingJob]] = relationship(back_populates="dataset")


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (Index("ix_training_jobs_status_created_at", "status", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    owner: Mapped[str | None] = _owner_column()
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="RESTRICT"), index=True
    )
    # The version number of that dataset, kept after the dataset row is deleted.
    dataset_version: Mapped[int | None] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(32))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    # Fraction done in [0, 1]; progress_detail says where ({"epoch": 3, "epochs": 10, ...}).
    # REGISTERED_PROGRESS (1.0) once the job's model version is registered.
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # What the job produced: evaluation for training methods, a report for worker_check.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    # Set by POST /jobs/{id}/cancel on a running job; the worker stops within one batch.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Refreshed by the worker while the job runs (progress, epochs).
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    dataset: Mapped[Dataset | None] = relationship(back_populates="jobs")
    epoch_metrics: Mapped[list[EpochMetric]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="EpochMetric.epoch"
    )


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="CASCADE"), index=True
    )
    # Which stage of a multi-stage method (e.g. "head" then "finetune") this epoch belongs to.
    stage: Mapped[str] = mapped_column(String(32), default="train")
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[TrainingJob] = relationship(back_populates="epoch_metrics")


class ModelName(Base):
    """A model name and its owner: only that owner's jobs add versions to it. Claimed by the
    first job that asks for the name, before any version exists."""

    __tablename__ = "model_names"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str | None] = _owner_column()
    # The highest version number ever given out under this name: numbers of deleted versions
    # (and of versions whose job died while saving) are never handed out again.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    # Predictions of this model whose top probability is below this go to the review queue of
    # the owner of the key that asked; NULL: none are kept.
    review_threshold: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        # At most one active version per name, whatever two API processes do at once.
        Index(
            "uq_model_versions_one_active_per_name",
            "name",
            unique=True,
            postgresql_where=text("is_active"),
            sqlite_where=text("is_active"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    owner: Mapped[str | None] = _owner_column()
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL"), index=True
    )
    # Relative to the models store root, so the store can move between machines.
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    metrics_summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    # What /predict runs by default: "float32" (its own model) or "int8" (its ONNX int8
    # export, only once that export passed its accuracy check)
    serving_precision: Mapped[str] = mapped_column(
        String(16), default="float32", server_default="float32"
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Its exports asked for so far (read along with it; the rows go with it in the database).
    exports: Mapped[list[ModelExport]] = relationship(
        viewonly=True, lazy="selectin", order_by="ModelExport.format"
    )


class ExportStatus(enum.StrEnum):
    QUEUED = "queued"  # asked for; a worker will build it
    RUNNING = "running"
    READY = "ready"  # stored, downloadable
    FAILED = "failed"  # `error` says why


class ModelExport(Base):
    """A version in another format (a TF Serving SavedModel archive, a format for devices),
    built once per version by a worker, and kept beside the version's files (under its
    folder, outside its manifest: loading the version never reads it) until the version goes."""

    __tablename__ = "model_exports"
    __table_args__ = (UniqueConstraint("version_id", "format"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    format: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=ExportStatus.QUEUED)
    # The archive's key in the models area, its sha256 and size, once it is ready.
    key: Mapped[str | None] = mapped_column(String(1024))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    # A format for devices: its accuracy check (app/ml/edge.py EdgeReport.describe), once ready.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    # When its task was last sent to the workers (sent again if nobody took it for long).
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DatasetAnalysis(Base):
    """What labeling help needs of a dataset version: its images' features from the default
    base, out-of-fold answers for its labeled images and answers for its unlabeled ones,
    computed once per version by a worker and stored beside the version's images (they go
    with it; the row cascades)."""

    __tablename__ = "dataset_analyses"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    dataset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), unique=True
    )
    status: Mapped[str] = mapped_column(String(16), default=ExportStatus.QUEUED)
    # The arrays' key in the datasets area, once ready; what was computed (base, size, the L2
    # strength the out-of-fold models chose, counts, seconds).
    key: Mapped[str | None] = mapped_column(String(1024))
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReviewStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for a person's label
    LABELED = "labeled"  # labeled, waiting to go into a dataset version


class ReviewItem(Base):
    """A prediction the model was unsure of, kept for a person to label: the image (stored
    once per owner under the review folder, by its sha256), the scores and which version gave
    them. Labeled items become images of the next dataset version, and then leave the queue."""

    __tablename__ = "review_items"
    __table_args__ = (
        # One item per image and model for an owner: the same image predicted again refreshes it.
        UniqueConstraint("owner", "model_name", "image_sha256"),
        Index("ix_review_items_owner_created_at", "owner", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    owner: Mapped[str | None] = _owner_column()
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    model_version: Mapped[int] = mapped_column(Integer)
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str | None] = mapped_column(String(255))
    # Every class's probability, {label: probability}, as the model answered.
    scores: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)
    top_label: Mapped[str] = mapped_column(String(200))
    top_probability: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default=ReviewStatus.PENDING)
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    labeled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# The Custom Vision compatible API's tables live in their own module; imported here so that
# this module registers every table on Base.metadata (Alembic and the migration test read it).
from app.db import customvision  # noqa: E402, F401
