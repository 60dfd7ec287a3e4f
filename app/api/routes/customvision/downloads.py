"""An exported iteration's download link: `downloadUri` of Custom Vision's Export, which its
users fetch without a key (Azure's are signed storage links; here the link's token, made for
that iteration's exports, is what grants it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from app.api.deps import SessionDep
from app.schemas.customvision import CUSTOM_VISION_RESPONSES
from app.services.customvision import exports

router = APIRouter(tags=["custom vision"], responses=CUSTOM_VISION_RESPONSES)


@router.get("/customvision/exports/{token}/{export}", response_class=FileResponse)
def download_export(
    token: Annotated[str, Path(min_length=20, max_length=64)],
    export: Annotated[str, Path(min_length=1, max_length=64)],
    session: SessionDep,
) -> FileResponse:
    """A zip, as Azure's exports are: the model, labels.txt, and this service's labels.json,
    preprocessing.json, predict.py and README.md."""
    found = exports.download(session, token=token, slug=export)
    return FileResponse(found.path, media_type="application/zip", filename=found.filename)
