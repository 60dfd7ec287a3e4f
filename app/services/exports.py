"""A stored version in other formats: ONNX added to versions saved without it, and the files
behind `GET /models/{name}/versions/{v}/download?format=...`.

`.keras` and ONNX are files of the version itself. A SavedModel archive is built on demand,
once per version, by a worker (a TensorFlow export takes seconds and gigabytes the API must not
spend): the first download asks for it (202, Retry-After), a worker builds it and stores it
under the version's folder in the models area, later downloads get it. It goes when the
version goes (its files share the version's prefix; its row cascades).
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import ConflictError, ModelUnavailableError, NotFoundError
from app.core.queue import BUILD_EXPORT, send_task
from app.db.base import utcnow
from app.db.locks import lock_key, model_name_key
from app.db.models import ExportStatus, ModelExport, ModelVersion
from app.db.session import after_commit, session_scope
from app.ml.export import ONNX_FILE
from app.ml.serving import META_FILE, MODEL_FILE, load_frozen_top, load_keras_model
from app.services import model_versions
from app.services.model_versions import VersionRef
from app.services.storage import get_storage
from models_store import ObjectNotFoundError, file_sha256

logger = logging.getLogger(__name__)


class DownloadFormat(enum.StrEnum):
    KERAS = "keras"  # the `.keras` file: keras.saving.load_model
    ONNX = "onnx"  # model.onnx: onnxruntime.InferenceSession
    SAVEDMODEL = "savedmodel"  # a .tar.gz in TF Serving's <name>/<version>/ layout


# Formats built by a worker when first asked for (the others are files of the version).
BUILT_ON_DEMAND = frozenset({DownloadFormat.SAVEDMODEL})

# A queued export's task is sent again when no worker took it for this long (the broker lost
# it, or refused it after the row was committed); a running one whose worker died is run
# again after EXPORT_STALE_SECONDS.
REQUEUE_AFTER_SECONDS = 60.0
EXPORT_STALE_SECONDS = 1800.0
# What a 202 asks the client to wait before it asks again.
RETRY_AFTER_SECONDS = 5


def add_onnx_export(ref: VersionRef) -> dict[str, Any] | None:
    """Export a stored version that has no ONNX file and add it to the version (its manifest
    and recorded checksum change; its other files do not). None if it had one already.
    The conversion runs before the name's lock is taken: only the swap holds it."""
    from app.ml.export import export_onnx

    folder = model_versions.served_folder(ref)
    if (folder / ONNX_FILE).is_file():
        return None
    metadata = json.loads((folder / META_FILE).read_text())
    model = load_keras_model(folder)
    with tempfile.TemporaryDirectory(prefix="export-", dir=get_settings().data_dir) as tmp:
        exported = export_onnx(
            model,
            Path(tmp) / ONNX_FILE,
            image_size=int(metadata["input"]["image_size"]),
            frozen_top=load_frozen_top(folder),
        )
        with session_scope() as session:
            lock_key(session, model_name_key(ref.name))
            row = session.get(ModelVersion, ref.id)
            if row is None:
                raise NotFoundError(f"{ref.name} v{ref.version} was deleted meanwhile")
            stored = model_versions.model_store().add_files(
                row.path,
                expected_sha256=row.sha256,
                sources={ONNX_FILE: exported.path},
                metadata={"exports": {"onnx": exported.describe()}},
            )
            row.sha256, row.size_bytes = stored.sha256, stored.size_bytes
    logger.info("exported %s v%s to ONNX", ref.name, ref.version)
    return exported.describe()


def stored_versions(*, name: str | None, version: int | None) -> list[VersionRef]:
    """Every stored version (of `name`, or that one `version`), oldest first; the caller
    skips those that turn out to have an export already."""
    with session_scope() as session:
        query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
        if name is not None:
            query = query.where(ModelVersion.name == name)
        if version is not None:
            query = query.where(ModelVersion.version == version)
        return [VersionRef.of(row) for row in session.scalars(query)]


def download_name(ref: VersionRef, fmt: DownloadFormat) -> str:
    """The file name a client should save the version in `fmt` as."""
    stem = f"{ref.name}-v{ref.version}"
    return {
        DownloadFormat.KERAS: f"{stem}.keras",
        DownloadFormat.ONNX: f"{stem}.onnx",
        DownloadFormat.SAVEDMODEL: f"{stem}-savedmodel.tar.gz",
    }[fmt]


def version_file(ref: VersionRef, fmt: DownloadFormat) -> Path:
    """The version's own file in `fmt` (keras or onnx), from its verified folder."""
    folder = model_versions.served_folder(ref)
    if fmt is DownloadFormat.KERAS:
        return folder / MODEL_FILE
    if not (folder / ONNX_FILE).is_file():
        raise NotFoundError(
            f"{ref.name} v{ref.version} has no ONNX export; an operator can add one with "
            f"`python -m app.cli export-onnx --name {ref.name} --version {ref.version}`"
        )
    return folder / ONNX_FILE


def _send(export_id: uuid.UUID) -> None:
    send_task(BUILD_EXPORT, args=[str(export_id)], queue=get_settings().default_queue)


def _find(session: Session, *, version: ModelVersion, fmt: DownloadFormat) -> ModelExport | None:
    return session.scalar(
        select(ModelExport)
        .where(ModelExport.version_id == version.id, ModelExport.format == fmt.value)
        .execution_options(populate_existing=True)
    )


def _needs_sending(export: ModelExport | None, *, retry: bool) -> bool:
    if export is None:
        return True
    if export.status == ExportStatus.FAILED:
        return retry
    return _waited_too_long(export, now=utcnow())


def request_export(
    session: Session, *, version: ModelVersion, fmt: DownloadFormat, retry: bool = False
) -> ModelExport:
    """The version's export in `fmt`, asked for once: a new one is queued and its task sent
    after the commit; one that waits too long is sent again; with `retry`, a failed one is
    queued again. Changes are made under the name's lock, so concurrent first downloads make
    one export and send one task."""
    assert fmt in BUILT_ON_DEMAND
    export = _find(session, version=version, fmt=fmt)
    if not _needs_sending(export, retry=retry):
        assert export is not None
        return export
    lock_key(session, model_name_key(version.name))
    export = _find(session, version=version, fmt=fmt)  # current, now that the lock is held
    if not _needs_sending(export, retry=retry):
        assert export is not None
        return export
    if export is None:
        export = ModelExport(version_id=version.id, format=fmt.value)
        session.add(export)
    else:
        if export.status != ExportStatus.FAILED:
            logger.warning(
                "export %s of %s v%s: sending its task again",
                export.id,
                version.name,
                version.version,
            )
        export.status, export.error, export.worker_id = ExportStatus.QUEUED.value, None, None
    export.requested_at = utcnow()
    session.flush()
    after_commit(session, functools.partial(_send, export.id))
    return export


def _waited_too_long(export: ModelExport, *, now: Any) -> bool:
    if export.status == ExportStatus.QUEUED:
        return bool(now - export.requested_at > timedelta(seconds=REQUEUE_AFTER_SECONDS))
    if export.status == ExportStatus.RUNNING and export.started_at is not None:
        return bool(now - export.started_at > timedelta(seconds=EXPORT_STALE_SECONDS))
    return False


def list_exports(session: Session, *, version: ModelVersion) -> list[ModelExport]:
    return list(
        session.scalars(
            select(ModelExport)
            .where(ModelExport.version_id == version.id)
            .order_by(ModelExport.format)
        )
    )


def ready_file(export: ModelExport) -> Path:
    """This machine's copy of a ready export's archive, checked against its sha256 (from a
    bucket: downloaded into the cache first)."""
    assert export.key is not None and export.sha256 is not None
    store = get_storage().models
    local = store.local_path(export.key)
    if local is None:
        local = get_storage().cache_dir / "exports" / export.sha256
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
            try:
                store.download(export.key, partial)
                partial.replace(local)
            except ObjectNotFoundError as exc:
                raise ModelUnavailableError(f"the export's file is gone: {exc}") from exc
            finally:
                partial.unlink(missing_ok=True)
    if not local.is_file() or file_sha256(local) != export.sha256:
        raise ModelUnavailableError(f"the export's file {export.key} is missing or changed")
    return local


def refuse_failed(export: ModelExport, *, ref: VersionRef) -> None:
    """ConflictError for an export that failed, naming why and how to try again."""
    if export.status == ExportStatus.FAILED:
        raise ConflictError(
            f"the {export.format} export of {ref.name} v{ref.version} failed: {export.error}; "
            f"POST /models/{ref.name}/versions/{ref.version}/exports/{export.format} tries again"
        )


# --- In a worker


@dataclass(frozen=True)
class _Claimed:
    export_id: uuid.UUID
    fmt: DownloadFormat
    ref: VersionRef


def _claim(export_id: uuid.UUID, worker_id: str) -> _Claimed | None:
    """Move a queued export to running on this worker; None if it is not queued (built,
    running elsewhere, or gone with its version)."""
    with session_scope() as session:
        claimed = session.execute(
            update(ModelExport)
            .where(ModelExport.id == export_id, ModelExport.status == ExportStatus.QUEUED.value)
            .values(status=ExportStatus.RUNNING.value, worker_id=worker_id, started_at=utcnow())
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        export = session.get(ModelExport, export_id)
        assert export is not None
        version = session.get(ModelVersion, export.version_id)
        assert version is not None  # the export's row goes with its version's
        return _Claimed(export_id, DownloadFormat(export.format), VersionRef.of(version))


def _finish(export_id: uuid.UUID, worker_id: str, **values: Any) -> bool:
    with session_scope() as session:
        finished = session.execute(
            update(ModelExport)
            .where(
                ModelExport.id == export_id,
                ModelExport.status == ExportStatus.RUNNING.value,
                ModelExport.worker_id == worker_id,
            )
            .values(finished_at=utcnow(), **values)
        )
        return bool(finished.rowcount == 1)  # type: ignore[attr-defined]


def run_export(*, export_id: uuid.UUID, worker_id: str) -> None:
    """Build a queued export (in a worker), store it under its version's folder and mark it
    ready; a failure is recorded on the export, with its reason. Safe to call twice."""
    claimed = _claim(export_id, worker_id)
    if claimed is None:
        logger.info("export %s is not queued; nothing to do", export_id)
        return
    ref = claimed.ref
    try:
        folder = model_versions.served_folder(ref)
        with tempfile.TemporaryDirectory(prefix="export-", dir=get_settings().data_dir) as tmp:
            archive = _saved_model_archive(ref, folder, Path(tmp))
            key = f"{ref.path}/exports/{claimed.fmt.value}/{download_name(ref, claimed.fmt)}"
            sha256, size = file_sha256(archive), archive.stat().st_size
            _store(key, archive, ref=ref)
    except Exception as exc:
        logger.exception("export %s of %s v%s failed", export_id, ref.name, ref.version)
        _finish(
            export_id,
            worker_id,
            status=ExportStatus.FAILED.value,
            error=f"{type(exc).__name__}: {exc}",
        )
        return
    if _finish(
        export_id,
        worker_id,
        status=ExportStatus.READY.value,
        key=key,
        sha256=sha256,
        size_bytes=size,
    ):
        logger.info("exported %s v%s as %s (%d bytes)", ref.name, ref.version, claimed.fmt, size)


def _store(key: str, archive: Path, *, ref: VersionRef) -> None:
    """Put the archive in the models area; under the name's lock, so that a version deleted
    meanwhile (its prefix already removed) does not get a file back."""
    store = get_storage().models
    store.put_file(key, archive)
    with session_scope() as session:
        lock_key(session, model_name_key(ref.name))
        if session.get(ModelVersion, ref.id) is None:
            store.delete(key)
            raise NotFoundError(f"{ref.name} v{ref.version} was deleted meanwhile")


def _saved_model_archive(ref: VersionRef, folder: Path, work: Path) -> Path:
    """A .tar.gz of the version as a SavedModel under `<name>/<version>/`, the layout TF
    Serving's --model_base_path expects."""
    from app.ml.export import export_saved_model

    exported = work / "savedmodel" / str(ref.version)
    export_saved_model(load_keras_model(folder), exported)
    archive = work / "savedmodel.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(exported, arcname=f"{ref.name}/{ref.version}")
    return archive
