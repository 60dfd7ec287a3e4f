"""The interactive API documentation, `/docs` (Swagger UI) and `/redoc`, served whole by the
API: their scripts and styles come from the `fastapi-offline` package's copies, never from a
CDN, so they work on a machine without internet; and under a Content-Security-Policy, like
the console's, that forbids framing them and running any script not served from here."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.static_files import index_files, serve, serve_indexed

PAGES_DIR = Path(__file__).resolve().parents[1] / "docs_pages"
VENDOR_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"

# Swagger UI and ReDoc set style attributes and inline <style> (ReDoc's styled-components),
# show data: images (Swagger's icons) and run ReDoc's search in a blob: worker; scripts,
# though, only from this server, and nothing frames the pages.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src blob:; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

# Every file these pages load, by name: a request can only ever name one of these.
ASSETS = index_files([VENDOR_DIR, PAGES_DIR], suffixes=[".js", ".css"])

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui() -> FileResponse:
    return serve(PAGES_DIR / "swagger.html", SECURITY_HEADERS)


@router.get("/redoc")
def redoc() -> FileResponse:
    return serve(PAGES_DIR / "redoc.html", SECURITY_HEADERS)


@router.get("/docs/assets/{name}")
def docs_asset(name: str) -> FileResponse:
    return serve_indexed(ASSETS, name, headers=SECURITY_HEADERS, owner="the API documentation")
