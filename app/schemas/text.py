"""String types shared by the request schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and no name or label here needs one: a 422 naming the
    # field, not a database error.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Text a client chooses (names, file names): anything but NUL.
Text = Annotated[str, AfterValidator(_no_nul)]
