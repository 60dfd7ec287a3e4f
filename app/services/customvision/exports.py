"""An iteration's exports, as Custom Vision's export_iteration and get_exports speak of
them: a platform and a flavor mapped to one of this service's download formats (ONNX, a
SavedModel for TensorFlow, TensorFlow Lite in float32 or float16, and for DockerFile the
serve-only package: a Dockerfile and a server answering /predict without TensorFlow). Each
is Done once its file exists (ONNX and DockerFile at once; the others when a worker has
built and checked them), and downloads without a key from a link of its own, as Azure's
signed storage links do: a zip of the model (model.onnx, model.tflite or savedmodel.tar.gz),
labels.txt, labels.json, preprocessing.json and predict.py (DockerFile: the serve-only
package). The files are this service's models: RGB pixels of any size with the resize
inside, not Azure's fixed-size BGR input."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.customvision import CvIteration
from app.db.models import ExportStatus, ModelExport, ModelVersion
from app.schemas.customvision import Export
from app.services import exports
from app.services.customvision.errors import CustomVisionError, not_found
from app.services.customvision.iterations import model_name_of, model_version
from app.services.exports import DownloadFormat
from app.services.model_versions import VersionRef


@dataclass(frozen=True)
class ExportKind:
    platform: str
    flavor: str | None
    format: DownloadFormat
    model_file: str  # the model's name in the downloaded zip


# Platform -> flavor (upper case; None: none given) -> what it is here.
KINDS: dict[str, dict[str | None, ExportKind]] = {
    "ONNX": {
        flavor: ExportKind("ONNX", flavor, DownloadFormat.ONNX, "model.onnx")
        for flavor in (None, "ONNX10", "ONNX12")
    },
    "TENSORFLOW": {
        None: ExportKind("TensorFlow", None, DownloadFormat.SAVEDMODEL, "savedmodel.tar.gz"),
        "TENSORFLOWNORMAL": ExportKind(
            "TensorFlow", "TensorFlowNormal", DownloadFormat.SAVEDMODEL, "savedmodel.tar.gz"
        ),
        "TENSORFLOWLITE": ExportKind(
            "TensorFlow", "TensorFlowLite", DownloadFormat.TFLITE, "model.tflite"
        ),
        "TENSORFLOWLITEFLOAT16": ExportKind(
            "TensorFlow", "TensorFlowLiteFloat16", DownloadFormat.TFLITE_FP16, "model.tflite"
        ),
    },
    # The serve-only package (a Dockerfile and a server without TensorFlow); its image is
    # python:3.11-slim, built for Linux on x86-64 and ARM alike. No Windows containers.
    "DOCKERFILE": {
        (flavor.upper() if flavor else None): ExportKind(
            "DockerFile", flavor, DownloadFormat.DOCKER, "model.onnx"
        )
        for flavor in (None, "Linux", "ARM")
    },
}
_STATUS = {
    ExportStatus.QUEUED.value: "Exporting",
    ExportStatus.RUNNING.value: "Exporting",
    ExportStatus.READY.value: "Done",
    ExportStatus.FAILED.value: "Failed",
}


def kind_of(platform: str | None, flavor: str | None) -> ExportKind:
    flavors = KINDS.get((platform or "").upper())
    if flavors is None:
        raise CustomVisionError(
            "BadRequestExportValidationFailed",
            f"platform {platform!r} is not exported here: ONNX (flavor ONNX10, ONNX12 or none), "
            "TensorFlow (TensorFlowNormal, TensorFlowLite, TensorFlowLiteFloat16) or "
            "DockerFile (Linux, ARM)",
        )
    kind = flavors.get(flavor.upper() if flavor else None)
    if kind is None:
        names = ", ".join(k.flavor for k in flavors.values() if k.flavor)
        raise CustomVisionError(
            "BadRequestExportValidationFailed", f"no {platform} flavor {flavor!r}: {names}"
        )
    return kind


def _version_row(session: Session, iteration: CvIteration) -> ModelVersion:
    version = model_version(session, iteration)
    row = None
    if version is not None:
        row = session.scalar(
            select(ModelVersion).where(
                ModelVersion.name == model_name_of(str(iteration.project_id)),
                ModelVersion.version == version,
            )
        )
    if row is None:
        raise CustomVisionError(
            "BadRequestIterationIsNotTrained", f"iteration {iteration.id} is not trained"
        )
    return row


def _recorded(iteration: CvIteration) -> list[ExportKind]:
    kinds = []
    for entry in iteration.settings.get("exports", []):
        kinds.append(kind_of(entry["platform"], entry.get("flavor")))
    return kinds


def export(
    session: Session, *, iteration: CvIteration, platform: str | None, flavor: str | None
) -> tuple[CvIteration, ExportKind]:
    """Ask for the iteration's export to `platform` and `flavor` (a worker builds the ones
    that are not files of the version), with the iteration's download token (made once)."""
    kind = kind_of(platform, flavor)
    row = _version_row(session, iteration)
    if kind.format in exports.BUILT_ON_DEMAND:
        export_row = exports.request_export(session, version=row, fmt=kind.format)
        exports.refuse_failed(export_row, ref=VersionRef.of(row))
    if iteration.export_token is None:
        iteration.export_token = secrets.token_urlsafe(32)
    if kind not in _recorded(iteration):
        entry = {"platform": kind.platform, "flavor": kind.flavor}
        iteration.settings = {
            **iteration.settings,
            "exports": [*iteration.settings.get("exports", []), entry],
        }
    iteration.last_modified_at = utcnow()
    session.flush()
    return iteration, kind


def _state(session: Session, row: ModelVersion, kind: ExportKind) -> tuple[str, ModelExport | None]:
    if kind.format not in exports.BUILT_ON_DEMAND:
        return "Done", None
    found = session.scalar(
        select(ModelExport).where(
            ModelExport.version_id == row.id, ModelExport.format == kind.format.value
        )
    )
    if found is None:
        return "Exporting", None
    status = _STATUS.get(found.status, "Exporting")
    if status == "Done" and (found.report or {}).get("degraded"):
        return "Failed", found  # its check found it worse than allowed: not handed over
    return status, found


def _slug(kind: ExportKind) -> str:
    return f"{kind.platform}-{kind.flavor}".lower() if kind.flavor else kind.platform.lower()


def wire(session: Session, iteration: CvIteration, kind: ExportKind, *, base_url: str) -> Export:
    status, _ = _state(session, _version_row(session, iteration), kind)
    link = f"{base_url.rstrip('/')}/customvision/exports/{iteration.export_token}/{_slug(kind)}"
    return Export(
        platform=kind.platform,
        status=status,
        download_uri=link if status == "Done" else None,
        flavor=kind.flavor,
    )


def list_exports(session: Session, *, iteration: CvIteration, base_url: str) -> list[Export]:
    return [wire(session, iteration, kind, base_url=base_url) for kind in _recorded(iteration)]


@dataclass(frozen=True)
class Download:
    """What a download link serves: the zip at `path`, named `filename`."""

    path: Path
    filename: str


def download(session: Session, *, token: str, slug: str) -> Download:
    """The zip of the export a link names: its model (as `kind.model_file`), labels.txt,
    labels.json, preprocessing.json, predict.py and README.md (NotFound unless the export
    was asked for and is Done)."""
    iteration = session.scalar(select(CvIteration).where(CvIteration.export_token == token))
    if iteration is None:
        raise not_found("NotFound", "no such export")
    kind = next((k for k in _recorded(iteration) if _slug(k) == slug.lower()), None)
    if kind is None:
        raise not_found("NotFound", "no such export")
    row = _version_row(session, iteration)
    status, built = _state(session, row, kind)
    if status != "Done":
        raise not_found("NotFound", f"the export is not ready ({status})")
    ref = VersionRef.of(row)
    if kind.format is DownloadFormat.DOCKER:
        return Download(path=exports.serve_package(ref), filename=f"{ref.name}-{_slug(kind)}.zip")
    if built is None:
        model_path, check = exports.version_file(ref, kind.format), None
    else:
        model_path, check = exports.ready_file(built), built.report
    archive = exports.bundle(
        ref,
        kind.format,
        model_path=model_path,
        check=check,
        model_file=kind.model_file,
        labels_txt=True,
    )
    return Download(path=archive, filename=f"{ref.name}-{_slug(kind)}.zip")
