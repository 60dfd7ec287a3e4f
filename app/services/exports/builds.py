"""Building an export in a worker: claim the queued row, build the file (a SavedModel
archive, or a format for devices with its accuracy check), store it under the version's
folder and mark the row ready, or failed with the reason."""

from __future__ import annotations

import json
import logging
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.config import get_settings
from app.core.errors import NotFoundError
from app.db.claims import claim_queued, finish_running
from app.db.locks import lock_key, model_name_key
from app.db.models import ExportStatus, ModelExport, ModelVersion
from app.db.session import session_scope
from app.ml.serving import load_keras_model
from app.services import model_versions
from app.services.exports import edge
from app.services.exports.formats import EDGE_FORMATS, DownloadFormat, download_name
from app.services.model_versions import VersionRef
from app.services.storage import get_storage
from models_store import file_sha256

logger = logging.getLogger(__name__)

# An accuracy check's figures, beside the export's file.
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class _Claimed:
    export_id: uuid.UUID
    fmt: DownloadFormat
    ref: VersionRef


def _claim(export_id: uuid.UUID, worker_id: str) -> _Claimed | None:
    """Move a queued export to running on this worker; None if it is not queued (built,
    running elsewhere, or gone with its version)."""
    with session_scope() as session:
        if not claim_queued(session, ModelExport, export_id, worker_id):
            return None
        export = session.get(ModelExport, export_id)
        assert export is not None
        version = session.get(ModelVersion, export.version_id)
        assert version is not None  # the export's row goes with its version's
        return _Claimed(export_id, DownloadFormat(export.format), VersionRef.of(version))


def _finish(export_id: uuid.UUID, worker_id: str, **values: Any) -> bool:
    return finish_running(ModelExport, export_id, worker_id, **values)


def run_export(*, export_id: uuid.UUID, worker_id: str) -> None:
    """Build a queued export (in a worker), store it under its version's folder and mark it
    ready; a failure is recorded on the export, with its reason. Safe to call twice."""
    claimed = _claim(export_id, worker_id)
    if claimed is None:
        logger.info("export %s is not queued; nothing to do", export_id)
        return
    ref, fmt = claimed.ref, claimed.fmt
    report: dict[str, Any] | None = None
    try:
        folder = model_versions.served_folder(ref)
        with tempfile.TemporaryDirectory(prefix="export-", dir=get_settings().data_dir) as tmp:
            if fmt in EDGE_FORMATS:
                built, checked = edge.build_checked(folder, Path(tmp), fmt=fmt)
                report = checked.describe()
            else:
                built = _saved_model_archive(ref, folder, Path(tmp))
            key = f"{ref.path}/exports/{fmt.value}/{download_name(ref, fmt)}"
            sha256, size = file_sha256(built), built.stat().st_size
            _store(key, built, ref=ref, report=report)
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
        report=report,
    ):
        logger.info("exported %s v%s as %s (%d bytes)", ref.name, ref.version, fmt, size)


def _store(key: str, built: Path, *, ref: VersionRef, report: dict[str, Any] | None) -> None:
    """Put the file in the models area, with an accuracy check's report beside it as
    report.json (the version's manifest stays as it is: a new checksum would have every API
    process load the version again); under the name's lock, so that a version deleted
    meanwhile (its prefix already removed) does not get a file back."""
    store = get_storage().models
    store.put_file(key, built)
    report_key = f"{key.rsplit('/', 1)[0]}/{REPORT_FILE}"
    if report is not None:
        store.put_bytes(report_key, json.dumps(report, indent=2, sort_keys=True).encode())
    with session_scope() as session:
        lock_key(session, model_name_key(ref.name))
        if session.get(ModelVersion, ref.id) is None:
            store.delete(key)
            store.delete(report_key)
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


def build_now(ref: VersionRef, fmt: DownloadFormat, *, worker_id: str) -> tuple[ModelExport, bool]:
    """Build the version's export in `fmt` in this process (an operator's command for
    versions made before the format existed), unless it is ready or being built already;
    its row as it ended (ready, failed, or another worker's), and whether this built it."""
    from app.services.exports.tracking import request_export

    with session_scope() as session:
        version = session.get(ModelVersion, ref.id)
        if version is None:
            raise NotFoundError(f"{ref.name} v{ref.version} is gone")
        export = request_export(session, version=version, fmt=fmt, retry=True, send=False)
        export_id, waiting = export.id, export.status == ExportStatus.QUEUED
    if waiting:
        run_export(export_id=export_id, worker_id=worker_id)
    with session_scope() as session:
        found = session.get(ModelExport, export_id)
        assert found is not None
        session.expunge(found)
        return found, waiting
