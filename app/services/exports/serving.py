"""The int8 ONNX export as what /predict runs: a version serves it (by its own setting, or
when a request asks) only once a worker built it and its accuracy check on the version's test
split passed; never a file that check found degraded."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import ConflictError
from app.db.models import ExportStatus, ModelExport, ModelVersion
from app.services.exports.formats import DownloadFormat
from app.services.exports.tracking import degraded_figures, ready_file, refuse_failed
from app.services.model_versions import VersionRef

INT8 = DownloadFormat.ONNX_INT8


def _servable(export: ModelExport | None, *, ref: VersionRef) -> ModelExport:
    """The int8 export if it may answer predictions, else ConflictError saying why not."""
    where = f"/models/{ref.name}/versions/{ref.version}/exports/{INT8.value}"
    if export is None:
        raise ConflictError(
            f"{ref.name} v{ref.version} has no int8 ONNX export; POST {where} builds it and "
            "checks its accuracy"
        )
    refuse_failed(export, ref=ref)
    if export.status != ExportStatus.READY:
        raise ConflictError(
            f"the int8 ONNX export of {ref.name} v{ref.version} is {export.status}: a worker is "
            "building and checking it; ask again when GET "
            f"/models/{ref.name}/versions/{ref.version} shows it ready"
        )
    if (export.report or {}).get("degraded"):
        raise ConflictError(
            f"the int8 ONNX export of {ref.name} v{ref.version} is not served: its accuracy "
            f"check found it degraded ({degraded_figures(export)})"
        )
    return export


def int8_file(session: Session, *, ref: VersionRef) -> Path:
    """This machine's copy of the version's int8 ONNX export, checked against its sha256,
    or ConflictError if it may not answer (missing, not built yet, failed or degraded)."""
    export = session.scalar(
        select(ModelExport).where(
            ModelExport.version_id == ref.id, ModelExport.format == INT8.value
        )
    )
    return ready_file(_servable(export, ref=ref))


def set_serving_precision(session: Session, *, version: ModelVersion, precision: str) -> None:
    """What /predict runs for the version by default: "float32" or "int8" (refused with
    ConflictError unless its int8 export may answer)."""
    if precision == "int8":
        ref = VersionRef.of(version)
        _servable(next((e for e in version.exports if e.format == INT8.value), None), ref=ref)
    version.serving_precision = precision
    session.flush()
