"""The model registry: models, their versions, activation, download and deletion."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.responses import FileResponse

from app.api.deps import ModelCacheDep, RegistryReader, SessionDep, Trainer, VersionNumber
from app.core.errors import ModelUnavailableError
from app.schemas.models import ModelRead, ModelVersionRead
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
    activated = ModelVersionRead.model_validate(
        model_versions.activate_version(session, name=name, version=version, principal=principal)
    )
    session.commit()  # before forgetting: a prediction now must read the new active version
    cache.forget_resolutions()
    return activated


@router.get(
    "/{name}/versions/{version}/download",
    response_class=FileResponse,
    responses={
        **_NOT_FOUND,
        503: {"description": "the stored files fail their checksum"},
    },
)
def download_version(
    name: str,
    version: VersionNumber,
    session: SessionDep,
    principal: RegistryReader,
    format: DownloadFormat = DownloadFormat.KERAS,
) -> FileResponse:
    """The version as a file: `keras` (the `.keras` model), `onnx` (for ONNX Runtime) or
    `savedmodel` (a .tar.gz in TF Serving's `<name>/<version>/` layout). All take raw RGB
    pixels of any size, float32 0..255, shape (batch, height, width, 3)."""
    row = model_versions.get_version(session, name=name, version=version, principal=principal)
    path, filename = exports.download_path(VersionRef.of(row), format)
    media_type = "application/gzip" if format is DownloadFormat.SAVEDMODEL else None
    return FileResponse(
        path, media_type=media_type or "application/octet-stream", filename=filename
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
