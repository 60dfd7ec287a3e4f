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
    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_new_id)
    owner: Mapped[str | None] = _owner_column()
    name: Mapped[str] = mapped_column(String(200))
    # sha256 over the sorted (split, class, image sha256) triples: same content, same fingerprint.
    fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default=DatasetStatus.PROCESSING)
    class_names: Mapped[list[str]] = mapped_column(JSONType, default=list)
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
    method: Mapped[str] = mapped_column(String(32))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    # Fraction done in [0, 1]; progress_detail says where ({"epoch": 3, "epochs": 10, ...}).
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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
