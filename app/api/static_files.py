"""Files the API serves as they are (the console's, the API documentation's), each from a
fixed index built at start-up, so a request can only ever name one of them, and every one
with the security headers of the page it belongs to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from fastapi.responses import FileResponse

from app.core.errors import NotFoundError

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
}


def index_files(
    folders: Iterable[Path], *, suffixes: Iterable[str], exclude: Iterable[str] = ()
) -> dict[str, Path]:
    """Every file of `folders` with one of `suffixes`, by name (but those in `exclude`)."""
    wanted, left_out = set(suffixes), set(exclude)
    return {
        path.name: path
        for folder in folders
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix in wanted and path.name not in left_out
    }


def serve(path: Path, headers: Mapping[str, str]) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=dict(headers))


def serve_indexed(
    files: Mapping[str, Path], name: str, *, headers: Mapping[str, str], owner: str
) -> FileResponse:
    """The indexed file `name`, or a 404 saying that `owner` has no such file."""
    path = files.get(name)
    if path is None:
        raise NotFoundError(f"{owner} has no file {name!r}")
    return serve(path, headers)
