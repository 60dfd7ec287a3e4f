"""The API versions the Custom Vision routes answer to."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from app.services.customvision.errors import not_found

# Training v3.0 to v3.4-preview and Prediction v3.0 to v3.1, as the public specs list them;
# the routes are the same in each (what a later version adds is answered in all of them).
API_VERSIONS = ("v3.0", "v3.1", "v3.2", "v3.3", "v3.4-preview")


def api_version(version: Annotated[str, Path(alias="api_version")]) -> str:
    if version not in API_VERSIONS:
        raise not_found("NotFound", f"no API version {version[:40]!r}: {', '.join(API_VERSIONS)}")
    return version
