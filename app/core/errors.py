"""One error hierarchy for the domain; `register_error_handlers` maps it to JSON responses."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


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


class NotFoundError(AppError):
    status_code = 404
    code = "not_found"


class ConflictError(AppError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(AppError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(AppError):
    status_code = 415
    code = "unsupported_media_type"


class TooManyRequestsError(AppError):
    """A limit on the caller's rate or concurrent work; `Retry-After` says when to come back."""

    status_code = 429
    code = "too_many_requests"


class ServiceUnavailableError(AppError):
    status_code = 503
    code = "service_unavailable"


def error_body(code: str, detail: Any) -> dict[str, Any]:
    """The JSON shape every error response has."""
    return {"error": code, "detail": detail}


# TF Serving (/v1) and the Open Inference Protocol (/v2) both answer errors as
# {"error": "<message>"}; their clients read that string, so those paths get that shape.
PROTOCOL_PATH_PREFIXES = ("/v1/", "/v2")


def _error_response(
    request: Request,
    code: str,
    detail: Any,
    *,
    status_code: int,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    if request.url.path.startswith(PROTOCOL_PATH_PREFIXES):
        message = detail if isinstance(detail, str) else f"{code}: {detail}"
        return JSONResponse({"error": message}, status_code=status_code, headers=headers)
    return JSONResponse(error_body(code, detail), status_code=status_code, headers=headers)


async def _app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return _error_response(
        request, exc.code, exc.detail, status_code=exc.status_code, headers=exc.headers
    )


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Keep loc/msg/type so the client sees which field was wrong; drop echoed input.
    errors = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
        for err in exc.errors()
    ]
    return _error_response(request, "validation_error", errors, status_code=422)


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(
        request,
        code,
        exc.detail,
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # The database went away (restart, failover, network): the pool drops the dead
    # connection and the next request reconnects; this one gets a 503 the client can retry.
    logger.warning("database unavailable: %s", exc)
    return _error_response(
        request,
        "database_unavailable",
        "the database is unreachable right now; retry shortly",
        status_code=503,
        headers={"Retry-After": "2"},
    )


def register_error_handlers(app: FastAPI) -> None:
    """Install the handlers that turn every expected failure into `{"error", "detail"}` JSON."""
    app.add_exception_handler(AppError, _app_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(OperationalError, _database_error_handler)
    app.add_exception_handler(InterfaceError, _database_error_handler)
    app.add_exception_handler(PoolTimeoutError, _database_error_handler)  # pool exhausted
