"""An exported iteration's download link: `downloadUri` of Custom Vision's Export, which its
users fetch without a key (Azure's are signed storage links; here the link's token, made for
that export, is what grants it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from app.api.deps import SessionDep
from app.schemas.customvision import CUSTOM_VISION_RESPONSES
from app.services import exports, model_versions
from app.services.customvision import iterations
from app.services.exports import DownloadFormat
from app.services.model_versions import VersionRef

router = APIRouter(tags=["custom vision"], responses=CUSTOM_VISION_RESPONSES)


@router.get("/customvision/exports/{token}", response_class=FileResponse)
def download_export(
    token: Annotated[str, Path(min_length=20, max_length=64)], session: SessionDep
) -> FileResponse:
    name, version = iterations.exported(session, token=token)
    row = model_versions.get_version(session, name=name, version=version, principal=None)
    ref = VersionRef.of(row)
    return FileResponse(
        exports.version_file(ref, DownloadFormat.ONNX),
        media_type="application/octet-stream",
        filename=exports.download_name(ref, DownloadFormat.ONNX),
    )
