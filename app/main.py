"""The FastAPI application: `uvicorn app.main:app`."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.bodies import DOCUMENTED_BODIES, request_body_limit
from app.api.errors import register_error_handlers
from app.api.middleware import (
    CustomVisionPathMiddleware,
    RequestContextMiddleware,
    RequestLimitsMiddleware,
)
from app.api.routes import (
    console,
    customvision,
    datasets,
    docs,
    health,
    jobs,
    metrics,
    models,
    open_inference,
    predict,
    review,
    tfserving,
)
from app.core.config import get_settings
from app.core.logging import configure_logging
from app.schemas.errors import COMMON_RESPONSES, ErrorBody
from app.services.inference import MemoryBudget, ModelCache, keep_warm
from app.services.rate_limit import FAILED_KEYS_REFUSED, RateLimiter, predict_rate_limiter


def _return_large_frees_to_the_system() -> None:
    """glibc keeps freed memory in per-thread arenas once it has raised its mmap threshold
    (it does so after the first large free), so an image decoded in each of the thread pool's
    threads stays resident in each (measured: four 7000x7000 PNGs decoded one after another
    on four threads left +260 MB). A fixed 1 MiB threshold maps every large block on its own,
    and freeing it unmaps it. No-op where libc is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1024 * 1024)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    configure_logging(settings.log_level, json_logs=settings.log_json)
    _return_large_frees_to_the_system()
    settings.ensure_directories()
    # Loaded models live in this process; the refresher loads active versions at start-up and
    # whenever a new one is trained or activated, so requests never wait for a load.
    cache = ModelCache(capacity=settings.model_cache_size, max_batch=settings.predict_max_batch)
    app.state.model_cache = cache
    app.state.decode_budget = MemoryBudget(settings.decode_memory_budget_bytes)
    # Shared by every replica through Redis when SMALLVISION_REDIS_URL is set (see rate_limit).
    limiter = predict_rate_limiter(
        redis_url=settings.redis_url,
        rate_per_second=settings.predict_rate_per_second,
        burst=settings.predict_burst,
    )
    app.state.predict_rate_limiter = limiter
    # Keys that are not valid, per client address (this process's own: each costs its lookup).
    app.state.failed_key_limiter = RateLimiter(
        rate_per_second=settings.failed_keys_per_second,
        burst=settings.failed_key_burst,
        what=FAILED_KEYS_REFUSED,
    )
    refresher = asyncio.create_task(keep_warm(cache, interval=settings.model_refresh_seconds))
    try:
        yield
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        cache.close()
        await limiter.close()


def create_app() -> FastAPI:
    """Build the API: routers, error handlers and start-up work."""
    app = FastAPI(
        title="smallvision",
        summary="Train and serve image classifiers from small labeled datasets.",
        version="0.1.0",
        lifespan=lifespan,
        responses=COMMON_RESPONSES,
        # Served by app.api.routes.docs, offline and under a Content-Security-Policy.
        docs_url=None,
        redoc_url=None,
    )
    register_error_handlers(app)
    # Added last, runs first: the request id and the catch-all 500 wrap the body limits.
    app.add_middleware(
        RequestLimitsMiddleware,
        limit_for=request_body_limit,
        idle_timeout=lambda: get_settings().body_read_timeout_seconds,
    )
    app.add_middleware(RequestContextMiddleware)
    # First of all: Custom Vision's capitalised paths become the routes' (the limits read them).
    app.add_middleware(CustomVisionPathMiddleware)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(predict.router)
    app.include_router(review.router)
    app.include_router(tfserving.router)
    app.include_router(open_inference.router)
    app.include_router(customvision.router)
    app.include_router(console.router)
    app.include_router(docs.router)
    app.openapi = lambda: _openapi_with_our_errors(app)  # type: ignore[method-assign]
    return app


def _openapi_with_our_errors(app: FastAPI) -> dict[str, Any]:
    """FastAPI documents its own validation error shape ({"detail": [...]}); ours is the
    common {"error", "detail"} body, so the schema says so (clients and fuzzers rely on it)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        if "HTTPValidationError" in schemas:
            schemas["HTTPValidationError"] = ErrorBody.model_json_schema()
        # Bodies read after authentication (app.api.bodies) are invisible to FastAPI.
        for model in DOCUMENTED_BODIES:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(body.pop("$defs", {}))
            schemas[model.__name__] = body
        app.openapi_schema = schema
    return app.openapi_schema


app = create_app()
