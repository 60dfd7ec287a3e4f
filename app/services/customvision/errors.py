"""Custom Vision's errors: its `{"code", "message"}` body with its own codes, for every failure
on the `/customvision/...` routes (the official SDKs raise CustomVisionErrorException from it)."""

from __future__ import annotations

from app.core.errors import AppError

# The path prefix of the Custom Vision compatible API; its errors have Custom Vision's shape.
PATH_PREFIX = "/customvision/"

# This service's error codes (app.core.errors) as Custom Vision names them, for the failures
# the shared code raises (a bad key, a body over a limit, a field that does not validate).
SHARED_CODES = {
    "unauthorized": "Unauthorized",
    "forbidden": "Forbidden",
    "not_found": "NotFound",
    "bad_request": "BadRequest",
    "validation_error": "BadRequest",
    "payload_too_large": "BadRequestImageSizeBytes",
    "unsupported_media_type": "BadRequestImageFormat",
    "conflict": "Conflict",
    "too_many_requests": "TooManyRequests",
    "request_timeout": "BadRequest",
    "method_not_allowed": "BadRequest",
}


class CustomVisionError(AppError):
    """A failure with Custom Vision's code (`NotFoundProject`, `BadRequestImageFormat`, ...)."""

    def __init__(self, code: str, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status_code = status_code


def not_found(code: str, message: str) -> CustomVisionError:
    return CustomVisionError(code, message, status_code=404)


def custom_vision_code(code: str) -> str:
    """The Custom Vision code of an error this service raised with `code`."""
    if code[:1].isupper():  # already one of Custom Vision's
        return code
    return SHARED_CODES.get(code, "BadRequest" if code != "internal_error" else "ErrorUnknown")


def is_custom_vision_path(path: str) -> bool:
    return path.lower().startswith(PATH_PREFIX)
