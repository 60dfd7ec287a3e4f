"""The Azure Custom Vision compatible API: its Training and Prediction routes under
`/customvision/{version}/...`, so code written for Custom Vision runs here by changing the
endpoint and the key (README, "Coming from Azure Custom Vision")."""

from fastapi import APIRouter

from app.api.routes.customvision import downloads, prediction, training

router = APIRouter()
router.include_router(training.router)
router.include_router(prediction.router)
router.include_router(downloads.router)
