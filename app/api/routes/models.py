"""The model registry: models, their versions, activation, download and deletion."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response, status
from fastapi.responses import FileResponse, JSONResponse

from app.api.deps import ModelCacheDep, RegistryReader, SessionDep, Trainer, VersionNumber
from app.core.errors import ModelUnavailableError
from app.db.models import ExportStatus, ModelExport
from app.db.session import after_commit
from app.schemas.models import ExportRead, ModelRead, ModelVersionRead
from app.services import exports, model_versions
from app.services.exports import DownloadFormat
from app.services.model_versions import VersionRef

router = APIRouter(prefix="/models", tags=["models"])

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


_EXPORT_PENDING: dict[int | str, dict[str, Any]] = {
    202: {
        "model": ExportRead,
        "description": "a savedmodel archive is being built by a worker: ask again after "
        "Retry-After seconds",
    },
    409: {"description": "the export failed (the message says why)"},
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
) -> Response:
    """The version as a file: `keras` (the `.keras` model), `onnx` (for ONNX Runtime) or
    `savedmodel` (a .tar.gz in TF Serving's `<name>/<version>/` layout). All take raw RGB
    pixels of any size, float32 0..255, shape (batch, height, width, 3). A savedmodel archive
    is built once per version by a worker: the first requests answer 202 with Retry-After
    until it is ready."""
    row = model_versions.get_version(session, name=name, version=version, principal=principal)
    ref = VersionRef.of(row)
    filename = exports.download_name(ref, format)
    if format not in exports.BUILT_ON_DEMAND:
        return FileResponse(
            exports.version_file(ref, format),
            media_type="application/octet-stream",
            filename=filename,
        )
    export = exports.request_export(session, version=row, fmt=format)
    exports.refuse_failed(export, ref=ref)
    if export.status != ExportStatus.READY:
        return _pending(export)
    return FileResponse(
        exports.ready_file(export), media_type="application/gzip", filename=filename
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
    format: Literal[DownloadFormat.SAVEDMODEL],
    session: SessionDep,
    principal: Trainer,
) -> ExportRead:
    """Have a worker build the version in `format` (or try a failed export again), without
    downloading it; its state is in `GET .../exports`."""
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
