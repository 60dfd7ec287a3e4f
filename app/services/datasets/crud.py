"""Datasets as rows: made from an uploaded zip (the first version of a lineage), read, listed
and deleted."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import ConflictError, NotFoundError
from app.db.locks import dataset_lineage_key, lock_key, owner_jobs_key
from app.db.models import Dataset, DatasetStatus, JobStatus, TrainingJob
from app.db.session import after_commit
from app.ml.config import Task
from app.ml.data import NEGATIVE_LABEL
from app.services.auth import Principal, visible
from app.services.datasets.files import publish, remove_features, remove_files, staging
from app.services.datasets.ingest import Built, Ingest, SplitOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOptions:
    name: str
    validation_fraction: float
    test_fraction: float
    seed: int
    negative_folder: str = NEGATIVE_LABEL
    owner: str | None = None
    task: Task | None = None  # None: multilabel where an image has several labels


def ingest_zip(
    session: Session,
    *,
    zip_path: Path,
    options: IngestOptions,
    settings: Settings,
) -> Dataset:
    """Validate, decode, deduplicate and split the images of an uploaded zip into a new Dataset.
    Everything is written under a staging folder first; on any error nothing remains."""
    dataset_id = uuid.uuid4()
    with staging() as folder:
        ingest = Ingest(folder, settings=settings, what="the zip", task=options.task)
        ingest.add_zip(zip_path, negative_folder=options.negative_folder)
        built = ingest.finish(
            SplitOptions(
                validation_fraction=options.validation_fraction,
                test_fraction=options.test_fraction,
                seed=options.seed,
            )
        )
        if twin := _same_images(session, owner=options.owner, fingerprint=built.fingerprint):
            built.stats["warnings"].append(
                f"the same images in the same splits were uploaded before as dataset "
                f"{twin.name!r} (id {twin.id}, version {twin.version}); this upload is a "
                "separate dataset (delete one, or add images to the other as a new version)"
            )
        dataset = record_version(
            session,
            built=built,
            folder=folder,
            dataset_id=dataset_id,
            owner=options.owner,
            name=options.name,
            lineage_id=dataset_id,
            version=1,
        )
    logger.info(
        "dataset %s ingested: %d images, %d classes",
        dataset_id,
        len(built.images),
        len(built.classes),
    )
    return dataset


def record_version(
    session: Session,
    *,
    built: Built,
    folder: Path,
    dataset_id: uuid.UUID,
    owner: str | None,
    name: str,
    lineage_id: uuid.UUID,
    version: int,
    parent_id: uuid.UUID | None = None,
    diff: dict[str, Any] | None = None,
    before_publish: Callable[[Session], None] = lambda _: None,
) -> Dataset:
    """The row of a dataset version whose images `built` describes in the staging `folder`:
    added and flushed, then (once `before_publish` has not refused) the folder published. The
    one place an upload and a new version both make their row."""
    dataset = Dataset(
        id=dataset_id,
        owner=owner,
        name=name,
        lineage_id=lineage_id,
        version=version,
        fingerprint=built.fingerprint,
        status=DatasetStatus.READY.value,
        class_names=built.classes,
        task=built.task.value,
        split_counts=built.split_counts,
        stats=built.stats,
    )
    if parent_id is not None:  # a first version leaves both unset: SQL NULL, not JSON null
        dataset.parent_id, dataset.diff = parent_id, diff
    session.add(dataset)
    session.flush()
    before_publish(session)
    publish(session, folder=folder, dataset_id=dataset_id)
    return dataset


def _same_images(session: Session, *, owner: str | None, fingerprint: str) -> Dataset | None:
    """The owner's newest dataset version with exactly these images and splits, if any."""
    query = select(Dataset).where(Dataset.fingerprint == fingerprint)
    query = query.where(Dataset.owner.is_(None) if owner is None else Dataset.owner == owner)
    return session.scalars(query.order_by(Dataset.created_at.desc()).limit(1)).first()


def get_dataset(session: Session, *, dataset_id: uuid.UUID, principal: Principal | None) -> Dataset:
    """The dataset with this id if the caller may see it, or NotFoundError."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or (principal is not None and not principal.can_see(dataset.owner)):
        raise NotFoundError(f"dataset {dataset_id} not found")
    return dataset


def list_datasets(
    session: Session, *, principal: Principal, limit: int, offset: int
) -> list[Dataset]:
    """The caller's datasets (every dataset for an admin), newest first."""
    query = visible(select(Dataset), Dataset.owner, principal)
    query = query.order_by(Dataset.created_at.desc()).limit(limit).offset(offset)
    return list(session.scalars(query))


def delete_dataset(session: Session, *, dataset: Dataset) -> None:
    """Remove the dataset's rows and, once that is committed, its files; refuse while a job
    on it is queued or running. Finished jobs stay, detached from the dataset, so their history and
    models survive."""
    # Under the owner's jobs lock: a job submitted at the same moment either exists (and this
    # is a 409) or waits and then finds the dataset gone (404). Under the lineage's lock: a
    # version being made from this one either commits first (it has its own copy of every
    # image) or finds its parent gone (404).
    lock_key(session, owner_jobs_key(dataset.owner))
    lock_key(session, dataset_lineage_key(dataset.lineage_id))
    if session.scalar(select(Dataset.id).where(Dataset.id == dataset.id)) is None:
        raise NotFoundError(f"dataset {dataset.id} not found")  # deleted meanwhile
    active = session.scalar(
        select(TrainingJob.id).where(
            TrainingJob.dataset_id == dataset.id,
            TrainingJob.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
        )
    )
    if active is not None:
        raise ConflictError(f"dataset {dataset.id} is in use by job {active}; cancel it first")
    session.execute(
        update(TrainingJob).where(TrainingJob.dataset_id == dataset.id).values(dataset_id=None)
    )
    # Its cached features go too, unless another dataset of the owner has the same images
    # (the cache is per owner and keyed by content).
    shares_features = session.scalar(
        select(Dataset.id).where(
            Dataset.owner == dataset.owner,
            Dataset.fingerprint == dataset.fingerprint,
            Dataset.id != dataset.id,
        )
    )
    session.delete(dataset)
    # The files go only once the rows are gone for good.
    after_commit(session, functools.partial(remove_files, dataset.id))
    if dataset.fingerprint and shares_features is None:
        remove = functools.partial(
            remove_features, owner=dataset.owner, fingerprint=dataset.fingerprint
        )
        after_commit(session, remove)
