"""Every domain error the service raises, each with the HTTP status and code that describe it.

Plain Python: no web framework or database here. `app/api/errors.py` turns these into JSON
responses; workers and the CLI read `detail` as a message.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """A failure the client should hear about, with the HTTP status that describes it."""

    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class BadRequestError(AppError):
    status_code = 400
    code = "bad_request"


class WeightsMissingError(AppError):
    """A pretrained base's weight file is not on this machine (and cannot be downloaded)."""

    status_code = 400
    code = "weights_not_found"


class UnauthorizedError(AppError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(AppError):
    status_code = 403
    code = "forbidden"


class NotFoundError(AppError):
    status_code = 404
    code = "not_found"


class RequestTimeoutError(AppError):
    """The client stopped sending its request body."""

    status_code = 408
    code = "request_timeout"


class ConflictError(AppError):
    status_code = 409
    code = "conflict"


class DegradedExportError(ConflictError):
    """An export whose accuracy check found it worse than its float model by more than
    allowed: not handed over unless the caller says it accepts that."""

    code = "export_degraded"


class PayloadTooLargeError(AppError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(AppError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidValueError(AppError):
    """A value the service cannot store or use (e.g. a NUL character in a string)."""

    status_code = 422
    code = "validation_error"


class TooManyRequestsError(AppError):
    """A limit on the caller's rate or concurrent work; `Retry-After` says when to come back."""

    status_code = 429
    code = "too_many_requests"


class ServiceUnavailableError(AppError):
    status_code = 503
    code = "service_unavailable"


class AnalysisFailedError(ServiceUnavailableError):
    """A dataset version's analysis (labeling help) failed in the worker; its error says why."""

    code = "analysis_failed"


class ModelUnavailableError(AppError):
    """A registered version whose files cannot be served (checksum mismatch, missing files,
    Keras refusing to load them) or that did not answer in time."""

    status_code = 503
    code = "model_unavailable"


def error_body(code: str, detail: Any) -> dict[str, Any]:
    """The JSON shape every error response has."""
    return {"error": code, "detail": detail}
