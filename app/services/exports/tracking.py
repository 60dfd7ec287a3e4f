"""Exports a worker builds: asked for once per version and format (a row, then a task sent
after the commit), sent again when no worker took them, and read back once ready.

A SavedModel archive is built when first downloaded (202 with Retry-After until then); the
formats for devices are asked for when training registers the version (setting
`edge_export_formats`), and when first downloaded for versions made before. Each is stored
under its version's folder in the models area and goes when the version goes (its files share
the version's prefix; its row cascades)."""

from __future__ import annotations

import functools
import logging
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import ConflictError, DegradedExportError, ModelUnavailableError
from app.core.queue import BUILD_EXPORT, send_task
from app.db.base import utcnow
from app.db.locks import lock_key, model_name_key
from app.db.models import ExportStatus, ModelExport, ModelVersion
from app.db.session import after_commit
from app.services.exports.formats import BUILT_ON_DEMAND, DownloadFormat
from app.services.model_versions import VersionRef
from app.services.storage import get_storage
from models_store import ObjectNotFoundError, file_sha256

logger = logging.getLogger(__name__)

# A queued export's task is sent again when no worker took it for this long (the broker lost
# it, or refused it after the row was committed); a running one whose worker died is run
# again after EXPORT_STALE_SECONDS.
REQUEUE_AFTER_SECONDS = 60.0
EXPORT_STALE_SECONDS = 1800.0
# What a 202 asks the client to wait before it asks again.
RETRY_AFTER_SECONDS = 5


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
    session: Session,
    *,
    version: ModelVersion,
    fmt: DownloadFormat,
    retry: bool = False,
    send: bool = True,
) -> ModelExport:
    """The version's export in `fmt`, asked for once: a new one is queued and its task sent
    after the commit; one that waits too long is sent again; with `retry`, a failed one is
    queued again. Changes are made under the name's lock, so concurrent first downloads make
    one export and send one task. Without `send`, the caller builds it itself (run_export)."""
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
    if send:
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


def request_after_training(session: Session, *, version: ModelVersion) -> list[ModelExport]:
    """Ask for the formats of `edge_export_formats` for a version training just registered
    (each built and checked by a worker once the training's transaction commits)."""
    return [
        request_export(session, version=version, fmt=DownloadFormat(name))
        for name in get_settings().edge_export_formats
    ]


def degraded_figures(export: ModelExport) -> str:
    """What the accuracy check of a degraded export found, in words."""
    report = export.report or {}
    return (
        f"accuracy {report['accuracy']:.4f} against the float model's "
        f"{report['float_accuracy']:.4f} on {report['images']} {report['evaluated_on']} images "
        f"({report['accuracy_loss_points']} points lost, more than {report['max_loss_points']}; "
        f"agreement {report['agreement']:.4f})"
    )


def refuse_degraded(export: ModelExport, *, ref: VersionRef, allow: bool) -> None:
    """DegradedExportError (409) for a ready export whose check found it worse than the float
    model by more than the allowed loss, with the figures, unless the caller allows it."""
    if allow or not (export.report or {}).get("degraded"):
        return
    raise DegradedExportError(
        f"the {export.format} export of {ref.name} v{ref.version} is degraded: "
        f"{degraded_figures(export)}; allow_degraded=true downloads it anyway"
    )
