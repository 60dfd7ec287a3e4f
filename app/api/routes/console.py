"""The web console at `/ui`: plain HTML, CSS and JavaScript from app/console that call the
same public HTTP API as every other client. The pages hold no data and need no key to load;
the key is typed into the page and sent by its scripts."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from app.api.static_files import MEDIA_TYPES, index_files, serve, serve_indexed
from app.core.errors import NotFoundError

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "console"

# The console's files, by name: read once, so a request can only ever name one of these.
ASSETS = index_files([CONSOLE_DIR], suffixes=MEDIA_TYPES, exclude=["index.html"])

# ONNX Runtime Web, for "run in this browser": the files of its npm package (installed by
# `make install` from app/console/package-lock.json) that the console loads, and nothing else.
VENDOR_DIR = CONSOLE_DIR / "node_modules" / "onnxruntime-web" / "dist"
VENDOR_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")

# Defence in depth behind building every page with textContent: no inline script, no
# script or style from elsewhere, nothing framed. blob: images are the previews, the
# photos being classified and the downloads, fetched with the key and shown locally.
# 'wasm-unsafe-eval' lets the page compile WebAssembly (ONNX Runtime Web's, from this
# server); it does not allow eval() or any script from elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
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


@router.get("/ui/vendor/{name}")
def console_vendor_file(name: str) -> FileResponse:
    """One of ONNX Runtime Web's files, if this server has them installed."""
    path = VENDOR_DIR / name
    if name not in VENDOR_FILES or not path.is_file():
        raise NotFoundError(
            f"the console has no file {name!r}"
            + (
                ""
                if name not in VENDOR_FILES
                else ": ONNX Runtime Web is not installed here "
                "(make install runs npm ci in app/console)"
            )
        )
    return serve(path, SECURITY_HEADERS)
