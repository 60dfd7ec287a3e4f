"""Parsing what clients send over the wire, shared by every protocol: JSON and base64."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from app.core.config import get_settings
from app.core.errors import BadRequestError, PayloadTooLargeError


def parse_json(body: bytes, *, what: str = "the body") -> Any:
    """JSON text -> Python values; 400 for anything that is not JSON, including nesting too
    deep for the parser (which would otherwise surface as a RecursionError and a 500)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequestError(f"{what} is JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"{what} is not valid JSON ({exc})") from exc


def decode_base64(text: str, *, what: str) -> bytes:
    """Standard or URL-safe base64 (padding optional) -> bytes; 400/413 on bad input."""
    limit = get_settings().max_image_file_bytes
    if len(text) > (limit // 3 + 1) * 4 + 4:
        raise PayloadTooLargeError(f"{what} is larger than the limit of {limit} bytes")
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
        raise BadRequestError(f"{what} is not valid base64 ({exc})") from exc
