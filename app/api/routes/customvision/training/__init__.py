"""Custom Vision's Training API (the SDK's CustomVisionTrainingClient): every route under
`/customvision/{version}/training`, the key checked first, then the API version."""

from fastapi import APIRouter, Depends

from app.api.deps import custom_vision_trainer
from app.api.routes.customvision.training import images, iterations, predictions, projects
from app.api.routes.customvision.versions import api_version
from app.schemas.customvision import CUSTOM_VISION_RESPONSES

router = APIRouter(
    prefix="/customvision/{api_version}/training",
    tags=["custom vision"],
    responses=CUSTOM_VISION_RESPONSES,
    # the key first (before the path's API version is checked): no key, no other answer
    dependencies=[Depends(custom_vision_trainer), Depends(api_version)],
)
for part in (projects, images, iterations, predictions):
    router.include_router(part.router)
