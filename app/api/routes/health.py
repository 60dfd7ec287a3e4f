"""Liveness (`/health`) and readiness (`/ready`) probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.core.errors import error_body
from app.schemas.health import Liveness, Readiness
from app.services.health import readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Liveness)
def health() -> Liveness:
    """The process is up and serving requests."""
    return Liveness(status="ok")


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"description": "the database or the broker is unreachable"}},
)
def ready() -> Readiness | JSONResponse:
    """The database and the broker both answer; 503 with the reason otherwise."""
    checks = readiness()
    if all(outcome == "ok" for outcome in checks.values()):
        return Readiness(status="ready", checks=checks)
    return JSONResponse(error_body("not_ready", checks), status_code=503)
