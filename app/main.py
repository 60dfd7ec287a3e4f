"""The FastAPI application: `uvicorn app.main:app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.routes import datasets, health, jobs
from app.core.config import get_settings
from app.core.errors import register_error_handlers


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level)
    settings.ensure_directories()
    yield


def create_app() -> FastAPI:
    """Build the API: routers, error handlers and start-up work."""
    app = FastAPI(
        title="smallvision",
        summary="Train and serve image classifiers from small labeled datasets.",
        version="0.1.0",
        lifespan=lifespan,
    )
    register_error_handlers(app)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    return app


app = create_app()
