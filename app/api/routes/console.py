"""The web console at `/ui`: plain HTML, CSS and JavaScript from app/console that call the
same public HTTP API as every other client. The pages hold no data and need no key to load;
the key is typed into the page and sent by its scripts."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from app.api.static_files import MEDIA_TYPES, index_files, serve, serve_indexed

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "console"

# The console's files, by name: read once, so a request can only ever name one of these.
ASSETS = index_files([CONSOLE_DIR], suffixes=MEDIA_TYPES, exclude=["index.html"])

# Defence in depth behind building every page with textContent: no inline script, no
# script or style from elsewhere, nothing framed. blob: images are the previews, the
# photos being classified and the downloads, fetched with the key and shown locally.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load (with the ETag), so an upgraded server never runs old scripts.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    """People who open the server's address land in the console."""
    return RedirectResponse("/ui")


@router.get("/ui")
def console_page() -> FileResponse:
    return serve(CONSOLE_DIR / "index.html", SECURITY_HEADERS)


@router.get("/ui/assets/{name}")
def console_asset(name: str) -> FileResponse:
    return serve_indexed(ASSETS, name, headers=SECURITY_HEADERS, owner="the console")
