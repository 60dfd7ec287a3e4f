"""The model registry: models, their versions, activation, download and deletion."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response, status
from fastapi.responses import FileResponse, JSONResponse

from app.api.deps import ModelCacheDep, RegistryReader, SessionDep, Trainer, VersionNumber
from app.core.errors import ModelUnavailableError
from app.db.models import ExportStatus, ModelExport
from app.db.session import after_commit
from app.schemas.models import (
    ExportRead,
    ModelRead,
    ModelVersionRead,
    ServingSettings,
    VersionInputs,
)
from app.services import exports, model_versions
from app.services.exports import DownloadFormat
from app.services.model_versions import VersionRef

router = APIRouter(prefix="/models", tags=["models"])

# The formats a worker builds (POST .../exports/{format} asks for one).
BuiltFormat = Literal[
    DownloadFormat.SAVEDMODEL,
    DownloadFormat.TFLITE,
    DownloadFormat.TFLITE_FP16,
    DownloadFormat.TFLITE_INT8,
    DownloadFormat.ONNX_INT8,
]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "unknown model or version"}}


@router.get("", response_model=list[ModelRead])
def list_models(session: SessionDep, principal: RegistryReader) -> list[ModelRead]:
    """Your model names with their number of versions and their active version."""
    return [
        ModelRead.model_validate(m)
        for m in model_versions.list_models(session, principal=principal)
    ]


@router.get("/{name}/versions", response_model=list[ModelVersionRead], responses=_NOT_FOUND)
def list_versions(
    name: str, session: SessionDep, principal: RegistryReader
) -> list[ModelVersionRead]:
    """The model's versions, newest first, with their evaluation summary."""
    return [
        ModelVersionRead.model_validate(v)
        for v in model_versions.list_versions(session, name=name, principal=principal)
    ]


@router.get("/{name}/versions/{version}", response_model=ModelVersionRead, responses=_NOT_FOUND)
def read_version(
    name: str, version: VersionNumber, session: SessionDep, principal: RegistryReader
) -> ModelVersionRead:
    return ModelVersionRead.model_validate(
        model_versions.get_version(session, name=name, version=version, principal=principal)
    )


@router.get("/{name}/versions/{version}/inputs", response_model=VersionInputs, responses=_NOT_FOUND)
def read_version_inputs(
    name: str, version: VersionNumber, session: SessionDep, principal: RegistryReader
) -> VersionInputs:
    """The version's labels and what its ONNX model expects (a bundle's labels.json and
    preprocessing.json), for clients that run the model themselves."""
    row = model_versions.get_version(session, name=name, version=version, principal=principal)
    return VersionInputs.model_validate(exports.version_documents(VersionRef.of(row)))


@router.post(
    "/{name}/versions/{version}/activate",
    response_model=ModelVersionRead,
    responses={**_NOT_FOUND, 503: {"description": "the version's files cannot be loaded"}},
)
def activate_version(
    name: str, version: VersionNumber, session: SessionDep, cache: ModelCacheDep, principal: Trainer
) -> ModelVersionRead:
    """Serve this version for `name` from now on. It is loaded (and its checksums verified)
    before the switch, so no request waits for it and a broken version is never activated."""
    # Loaded (seconds) before the switch and outside its transaction, which starts with the
    # name's lock and must not hold it that long.
    try:
        cache.get(model_versions.version_ref(name=name, version=version, principal=principal))
    except ModelUnavailableError:
        # A DELETE of this version commits its row before removing its files, so files that
        # vanished while loading mean the version is gone: that is a 404, not a broken model.
        model_versions.version_ref(name=name, version=version, principal=principal)
        raise
    activated = model_versions.activate_version(
        session, name=name, version=version, principal=principal
    )
    # Forgotten once committed: a prediction from now on reads the new active version.
    after_commit(session, cache.forget_resolutions)
    return ModelVersionRead.model_validate(activated)


@router.put(
    "/{name}/versions/{version}/serving",
    response_model=ModelVersionRead,
    responses={
        **_NOT_FOUND,
        409: {
            "description": "int8 asked for while the version's int8 ONNX export is missing, "
            "still being built, failed or degraded (the message says which)"
        },
    },
)
def set_serving(
    name: str,
    version: VersionNumber,
    settings: ServingSettings,
    session: SessionDep,
    cache: ModelCacheDep,
    principal: Trainer,
) -> ModelVersionRead:
    """What /predict runs for this version when a request does not say: `int8` (its int8
    ONNX export, once that passed its accuracy check) or `float32` (the model). An active
    version is loaded in that precision before the switch."""
    row = model_versions.get_version(session, name=name, version=version, principal=principal)
    exports.set_serving_precision(session, version=row, precision=settings.precision)
    if row.is_active:
        cache.get(VersionRef.of(row), precision=settings.precision)
    after_commit(session, cache.forget_resolutions)
    return ModelVersionRead.model_validate(row)


_EXPORT_PENDING: dict[int | str, dict[str, Any]] = {
    202: {
        "model": ExportRead,
        "description": "the export is being built by a worker: ask again after Retry-After seconds",
    },
    409: {
        "description": "the export failed, or its accuracy check found it degraded (the "
        "message gives the figures; allow_degraded=true downloads it anyway)"
    },
}


@router.get(
    "/{name}/versions/{version}/download",
    response_class=FileResponse,
    responses={
        **_NOT_FOUND,
        **_EXPORT_PENDING,
        503: {"description": "the stored files fail their checksum"},
    },
)
def download_version(
    name: str,
    version: VersionNumber,
    session: SessionDep,
    principal: Trainer,
    format: DownloadFormat = DownloadFormat.KERAS,
    bundle: bool = False,
    allow_degraded: bool = False,
) -> Response:
    """The version as a file: `keras` (the `.keras` model), `onnx` (for ONNX Runtime),
    `savedmodel` (a .tar.gz in TF Serving's `<name>/<version>/` layout), or for devices
    `tflite` (float32), `tflite_fp16`, `tflite_int8` (full integer, uint8 in and out) and
    `onnx_int8`. All take raw RGB pixels of any size, 0..255 (float32; uint8 for
    tflite_int8). The exports a worker builds answer 202 with Retry-After until ready; a
    device format whose accuracy check found it degraded answers 409 with the figures unless
    `allow_degraded=true`. `bundle=true`: a zip of the model with labels.json,
    preprocessing.json, predict.py and a README. `docker`: a zip to serve the version
    elsewhere: a Dockerfile, the ONNX model, its labels and server.py, which answers POST
    /predict as this service does with ONNX Runtime only (no TensorFlow)."""
    row = model_versions.get_version(session, name=name, version=version, principal=principal)
    ref = VersionRef.of(row)
    if format is DownloadFormat.DOCKER:
        return FileResponse(
            exports.serve_package(ref),
            media_type=exports.media_type(format),
            filename=exports.download_name(ref, format),
        )
    check: dict[str, Any] | None = None
    if format not in exports.BUILT_ON_DEMAND:
        path = exports.version_file(ref, format)
    else:
        export = exports.request_export(session, version=row, fmt=format)
        exports.refuse_failed(export, ref=ref)
        if export.status != ExportStatus.READY:
            return _pending(export)
        exports.refuse_degraded(export, ref=ref, allow=allow_degraded)
        path, check = exports.ready_file(export), export.report
    if bundle:
        return FileResponse(
            exports.bundle(ref, format, model_path=path, check=check),
            media_type="application/zip",
            filename=exports.bundle_name(ref, format),
        )
    return FileResponse(
        path, media_type=exports.media_type(format), filename=exports.download_name(ref, format)
    )


def _pending(export: ModelExport) -> JSONResponse:
    body = ExportRead.model_validate(export).model_dump(mode="json")
    return JSONResponse(
        body,
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Retry-After": str(exports.RETRY_AFTER_SECONDS)},
    )


@router.get(
    "/{name}/versions/{version}/exports", response_model=list[ExportRead], responses=_NOT_FOUND
)
def list_exports(
    name: str, version: VersionNumber, session: SessionDep, principal: Trainer
) -> list[ExportRead]:
    """The version's exports asked for so far, with their state."""
    row = model_versions.get_version(session, name=name, version=version, principal=principal)
    return [ExportRead.model_validate(e) for e in exports.list_exports(session, version=row)]


@router.post(
    "/{name}/versions/{version}/exports/{format}",
    response_model=ExportRead,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_NOT_FOUND,
)
def request_export(
    name: str,
    version: VersionNumber,
    format: BuiltFormat,
    session: SessionDep,
    principal: Trainer,
) -> ExportRead:
    """Have a worker build the version in `format` (or try a failed export again), without
    downloading it; its state (and a device format's accuracy check) is in `GET
    .../exports` and the version's `exports`."""
    row = model_versions.get_version(session, name=name, version=version, principal=principal)
    return ExportRead.model_validate(
        exports.request_export(session, version=row, fmt=DownloadFormat(format), retry=True)
    )


@router.delete(
    "/{name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_NOT_FOUND, 409: {"description": "the version is active"}},
)
def delete_version(
    name: str, version: VersionNumber, session: SessionDep, cache: ModelCacheDep, principal: Trainer
) -> Response:
    """Delete a version that is not active (its row, then its files)."""
    ref = model_versions.delete_version(session, name=name, version=version, principal=principal)
    cache.evict(ref.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
