"""The model registry: trained models as numbered versions in the models store and the
database, one active version per name, and what serving needs to find and load them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import (
    BadRequestError,
    ConflictError,
    ModelUnavailableError,
    NotFoundError,
)
from app.db.locks import lock_key, model_name_key
from app.db.models import JobStatus, ModelExport, ModelName, ModelVersion, TrainingJob
from app.db.session import after_commit, session_scope
from app.services.auth import Principal, visible
from app.services.storage import get_storage, trim_cache
from models_store import ChecksumMismatchError, ModelStore, StoreError, VersionExistsError

MAX_VERSION_ATTEMPTS = 5


def model_store() -> ModelStore:
    return get_storage().model_store()


def claim_name(session: Session, *, name: str, owner: str | None) -> ModelName:
    """The name's row, claimed for `owner` if nobody has it yet; ConflictError if another owner
    has it. Call with model_name_key(name) held, so two owners cannot both claim it."""
    row = session.get(ModelName, name, populate_existing=True)
    if row is None:
        row = ModelName(name=name, owner=owner, last_version=0)
        session.add(row)
        session.flush()
    elif row.owner != owner:
        # Names are global; whose it is, and what it holds, is not said.
        raise ConflictError(f"model_name {name!r} is not available: choose another")
    return row


def release_unused_name(session: Session, *, name: str, owner: str | None) -> bool:
    """Give back a name that a job claimed and that holds nothing: no version was ever
    numbered under it, it has no review threshold, and none of the owner's queued or running
    jobs asks for it. Called in the transaction that ends a job without a version (failed,
    cancelled, or never enqueued), so a name is not claimed for good by a job that made
    nothing. True if it was released."""
    lock_key(session, model_name_key(name))
    row = session.get(ModelName, name, populate_existing=True)
    if row is None or row.owner != owner or row.last_version or row.review_threshold is not None:
        return False
    if session.scalar(select(ModelVersion.id).where(ModelVersion.name == name).limit(1)):
        return False
    waiting = session.scalars(
        select(TrainingJob.parameters).where(
            TrainingJob.owner == owner,
            TrainingJob.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
        )
    )
    if any(parameters.get("model_name") == name for parameters in waiting):
        return False
    session.delete(row)
    session.flush()
    return True


def _next_version(*, name: str, owner: str | None, store: ModelStore) -> int:
    """Hand out a version number nobody had: past the database's versions, the store's folders
    (a crash may leave one unregistered) and every number given out before (deleted too)."""
    with session_scope() as session:
        lock_key(session, model_name_key(name))
        row = claim_name(session, name=name, owner=owner)
        latest = session.scalar(
            select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
        )
        row.last_version = max(row.last_version, latest or 0, store.latest_version(name)) + 1
        return row.last_version


def register_version(
    *,
    name: str,
    job_id: uuid.UUID | None,
    owner: str | None,
    source_dir: Path,
    metadata: dict[str, Any],
    metrics_summary: dict[str, Any],
    may_activate: bool = True,
    still_valid: Callable[[Session], None] = lambda _: None,
    on_registered: Callable[[Session, ModelVersion], object] = lambda _session, _row: None,
) -> ModelVersion:
    """Store source_dir as the next version of `name` and record it; the first version of a
    name becomes active (unless `may_activate` is False: a model no better than chance is
    kept, never served by default). Ownership of the name is checked again here, under the
    name's lock (another owner may have claimed it since the job was submitted), and
    `still_valid(session)` may refuse the registration in that same transaction (a job taken
    over by another worker); `on_registered(session, row)` adds to it (the exports training
    asks for)."""
    store = model_store()
    for _ in range(MAX_VERSION_ATTEMPTS):
        version = _next_version(name=name, owner=owner, store=store)
        try:
            stored = store.write_version(
                name=name,
                version=version,
                source_dir=source_dir,
                metadata={**metadata, "version": version},
            )
        except VersionExistsError:
            continue  # a folder appeared under that number since: take the next one
        try:
            with session_scope() as session:
                lock_key(session, model_name_key(name))
                claim_name(session, name=name, owner=owner)
                still_valid(session)
                has_active = session.scalar(
                    select(ModelVersion.id).where(
                        ModelVersion.name == name, ModelVersion.is_active.is_(True)
                    )
                )
                row = ModelVersion(
                    owner=owner,
                    name=name,
                    version=version,
                    job_id=job_id,
                    path=stored.relative_path,
                    sha256=stored.sha256,
                    size_bytes=stored.size_bytes,
                    metrics_summary=metrics_summary,
                    is_active=may_activate and has_active is None,
                )
                session.add(row)
                session.flush()
                on_registered(session, row)
            return row
        except BaseException:
            store.delete_version(stored.relative_path)  # never a folder without its row
            raise
    raise RuntimeError(f"could not allocate a version number for model {name!r}")


@dataclass(frozen=True)
class VersionRef:
    """What serving needs of a version, detached from any database session."""

    id: uuid.UUID
    name: str
    version: int
    path: str
    sha256: str
    serving_precision: str = "float32"  # what /predict runs by default: float32 or int8

    @classmethod
    def of(cls, row: ModelVersion) -> VersionRef:
        return cls(
            id=row.id,
            name=row.name,
            version=row.version,
            path=row.path,
            sha256=row.sha256,
            serving_precision=row.serving_precision or "float32",
        )


@dataclass(frozen=True)
class ModelSummary:
    name: str
    versions: int
    latest_version: int
    active_version: int | None
    updated_at: datetime


def list_models(session: Session, *, principal: Principal) -> list[ModelSummary]:
    """The caller's model names with their version count, latest and active version."""
    # Only the caller's own active versions: under a name shared with another owner (from
    # before names had owners) theirs must not show.
    active = visible(
        select(ModelVersion.name, ModelVersion.version.label("active")).where(
            ModelVersion.is_active.is_(True)
        ),
        ModelVersion.owner,
        principal,
    ).subquery()
    query = visible(
        select(
            ModelVersion.name,
            func.count(ModelVersion.id),
            func.max(ModelVersion.version),
            func.max(active.c.active),
            func.max(ModelVersion.created_at),
        ),
        ModelVersion.owner,
        principal,
    )
    query = (
        query.outerjoin(active, active.c.name == ModelVersion.name)
        .group_by(ModelVersion.name)
        .order_by(ModelVersion.name)
    )
    return [
        ModelSummary(
            name=name,
            versions=count,
            latest_version=latest,
            active_version=active_version,
            updated_at=updated,
        )
        for name, count, latest, active_version, updated in session.execute(query)
    ]


def list_versions(
    session: Session, *, name: str, principal: Principal | None
) -> list[ModelVersion]:
    """The versions of one model, newest first; NotFoundError if the caller has none."""
    query = visible(select(ModelVersion), ModelVersion.owner, principal)
    rows = list(
        session.scalars(
            query.where(ModelVersion.name == name).order_by(ModelVersion.version.desc())
        )
    )
    if not rows:
        raise NotFoundError(f"model {name!r} not found")
    return rows


def get_version(
    session: Session, *, name: str, version: int, principal: Principal | None
) -> ModelVersion:
    """One version of one of the caller's models, or NotFoundError."""
    mine = visible(select(ModelVersion), ModelVersion.owner, principal)
    row = session.scalar(mine.where(ModelVersion.name == name, ModelVersion.version == version))
    if row is None:
        if session.scalar(mine.where(ModelVersion.name == name).limit(1)):
            raise NotFoundError(f"model {name!r} has no version {version}")
        raise NotFoundError(f"model {name!r} not found")
    return row


def version_ref(*, name: str, version: int, principal: Principal | None) -> VersionRef:
    """One version of the caller's, read in a session of its own."""
    with session_scope() as session:
        return VersionRef.of(get_version(session, name=name, version=version, principal=principal))


def resolve_version(
    session: Session, *, name: str | None, version: int | None, principal: Principal | None
) -> VersionRef:
    """The version a prediction should use: the one asked for, else the model's active version;
    without a name, the caller's only active model."""
    mine = visible(select(ModelVersion), ModelVersion.owner, principal)
    if name is None:
        if version is not None:
            raise BadRequestError("give the model name together with a version")
        active = list(session.scalars(mine.where(ModelVersion.is_active.is_(True))))
        if len(active) == 1:
            return VersionRef.of(active[0])
        if not active:
            raise ConflictError("no trained model yet: train one with POST /jobs")
        names = ", ".join(sorted(row.name for row in active))
        raise BadRequestError(f"several models are active, say which one: {names}")
    if version is not None:
        return VersionRef.of(get_version(session, name=name, version=version, principal=principal))
    row = session.scalar(mine.where(ModelVersion.name == name, ModelVersion.is_active.is_(True)))
    if row is None:
        list_versions(session, name=name, principal=principal)  # 404 for an unknown name
        raise ConflictError(f"model {name!r} has no active version: activate one")
    return VersionRef.of(row)


def active_versions(session: Session) -> list[VersionRef]:
    """Every model's active version, most recently created first."""
    rows = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.is_active.is_(True))
        .order_by(ModelVersion.created_at.desc())
    )
    return [VersionRef.of(row) for row in rows]


def existing_version_ids(session: Session, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these version ids still exist (another process may have deleted some)."""
    if not ids:
        return set()
    return set(session.scalars(select(ModelVersion.id).where(ModelVersion.id.in_(ids))))


def activate_version(
    session: Session, *, name: str, version: int, principal: Principal
) -> ModelVersion:
    """Make this version the one served for `name`. Under the name's lock, so an activation
    racing another activation or a delete of the same version sees its outcome: the old
    active version is switched off in the same transaction (the partial unique index allows
    one per name), and never one that belongs to another owner."""
    lock_key(session, model_name_key(name))
    session.expire_all()  # rows read before the lock may be stale
    row = get_version(session, name=name, version=version, principal=principal)
    current = session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.is_active.is_(True))
    )
    if current is not None and current.id != row.id:
        if current.owner != row.owner:
            raise ConflictError(
                f"the active version of {name!r} belongs to another owner; it stays active"
            )
        current.is_active = False
        session.flush()  # before the new one is switched on: the index allows one
    row.is_active = True
    session.flush()
    return row


def delete_version(
    session: Session, *, name: str, version: int, principal: Principal
) -> VersionRef:
    """Remove a version that is not active: its row (under the name's lock, so a concurrent
    activation of it either happens before and wins, or finds it gone), then, once that is
    committed, its files."""
    lock_key(session, model_name_key(name))
    session.expire_all()
    row = get_version(session, name=name, version=version, principal=principal)
    if row.is_active:
        raise ConflictError(
            f"{name} v{version} is the active version: activate another one before deleting it"
        )
    ref = VersionRef.of(row)
    # Its exports are files under its folder (removed with it) and rows that cascade; this
    # machine's copies of them (read from a bucket) go too.
    digests = session.scalars(select(ModelExport.sha256).where(ModelExport.version_id == row.id))
    export_copies = [get_storage().cache_dir / "exports" / d for d in digests if d is not None]
    session.delete(row)
    after_commit(session, lambda: _remove_files(ref, export_copies))
    return ref


def _remove_files(ref: VersionRef, export_copies: list[Path]) -> None:
    """A deleted version's files and this machine's copies of its exports."""
    model_store().delete_version(ref.path)
    for copy in export_copies:
        copy.unlink(missing_ok=True)


def version_folder(ref: VersionRef) -> Path:
    """The version's directory, every file checked against its recorded sha256 (with a
    bucket: this machine's copy, downloaded if it had none; older copies may be trimmed)."""
    folder = model_store().verified_path(ref.path, expected_sha256=ref.sha256)
    trim_cache(get_storage(), max_bytes=get_settings().cache_max_bytes)
    return folder


def served_folder(ref: VersionRef) -> Path:
    """The version's verified directory for sending its files; a checksum mismatch is a 503
    (ModelUnavailableError), never a file served."""
    try:
        return version_folder(ref)
    except (ChecksumMismatchError, StoreError) as exc:
        raise ModelUnavailableError(f"{ref.name} v{ref.version}: {exc}") from exc
