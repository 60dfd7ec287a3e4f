"""`GET /metrics`: Prometheus exposition of this API process."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import Admin
from app.core.metrics import REGISTRY
from app.services import metrics as _state_metrics  # noqa: F401  (registers its collector)

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(_: Admin) -> Response:
    """Request counts and latency per route, prediction latency and batch sizes, jobs by
    status and the training queue's depth (those two read from the database and broker)."""
    body = await run_in_threadpool(generate_latest, REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
