"""How errors become HTTP responses: domain errors, validation, database failures.

Every error is `{"error": code, "detail": ...}`, except on the TF Serving (`/v1`) and Open
Inference Protocol (`/v2`) paths, whose clients read `{"error": "<message>"}`, and on the
Custom Vision compatible API (`/customvision/...`), whose SDKs read `{"code", "message"}`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import AppError, error_body
from app.core.logging import request_id_var
from app.services.customvision.errors import custom_vision_code, is_custom_vision_path

logger = logging.getLogger(__name__)

# TF Serving (/v1) and the Open Inference Protocol (/v2) both answer errors as
# {"error": "<message>"}; their clients read that string, so those paths get that shape.
PROTOCOL_PATH_PREFIXES = ("/v1/", "/v2")


HTTP_ERROR_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
}


def error_response(
    path: str,
    code: str,
    detail: Any,
    *,
    status_code: int,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The error response for a request to `path`, in the shape that path's clients read."""
    if path.startswith(PROTOCOL_PATH_PREFIXES):
        message = detail if isinstance(detail, str) else f"{code}: {detail}"
        return JSONResponse({"error": message}, status_code=status_code, headers=headers)
    if is_custom_vision_path(path):
        message = detail if isinstance(detail, str) else f"{code}: {detail}"
        body = {"code": custom_vision_code(code), "message": message}
        # (Custom Vision answers a request it cannot read 400, never 422)
        status_code = 400 if status_code == 422 else status_code
        return JSONResponse(body, status_code=status_code, headers=headers)
    return JSONResponse(error_body(code, detail), status_code=status_code, headers=headers)


def internal_error_response(path: str) -> JSONResponse:
    """A 500 that names the request id to quote, and nothing of the failure itself (that is
    in the log line with the same id)."""
    request_id = request_id_var.get() or "unknown"
    return error_response(
        path,
        "internal_error",
        f"an unexpected error occurred; quote request id {request_id} when reporting it",
        status_code=500,
    )


async def _app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(
        request.url.path, exc.code, exc.detail, status_code=exc.status_code, headers=exc.headers
    )


def validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """loc/msg/type of each problem, so the client sees which field was wrong; never the
    echoed input (it may be huge, or a secret)."""
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
        for err in errors
    ]


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(
        request.url.path,
        "validation_error",
        validation_errors(list(exc.errors())),
        status_code=422,
    )


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    return error_response(
        request.url.path,
        code,
        exc.detail,
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _database_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    # The database went away (restart, failover, network): the pool drops the dead
    # connection and the next request reconnects; this one gets a 503 the client can retry.
    logger.warning("database unavailable: %s", exc)
    return error_response(
        request.url.path,
        "database_unavailable",
        "the database is unreachable right now; retry shortly",
        status_code=503,
        headers={"Retry-After": "2"},
    )


async def _data_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value the client sent (a NUL character in a string, a number
    # out of range) that validation let through: the client's mistake, not a server failure.
    logger.warning("the database refused a value: %s", str(exc).splitlines()[0])
    return error_response(
        request.url.path,
        "validation_error",
        "a value in the request cannot be stored (for example a NUL character in a string)",
        status_code=422,
    )


async def _database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unexpected database error", exc_info=exc)
    return internal_error_response(request.url.path)


def register_error_handlers(app: FastAPI) -> None:
    """Install the handlers that turn every expected failure into `{"error", "detail"}` JSON.
    (Anything else becomes a logged 500 in app.api.middleware.)"""
    app.add_exception_handler(AppError, _app_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(OperationalError, _database_unavailable_handler)
    app.add_exception_handler(InterfaceError, _database_unavailable_handler)
    app.add_exception_handler(PoolTimeoutError, _database_unavailable_handler)  # pool exhausted
    app.add_exception_handler(DataError, _data_error_handler)
    app.add_exception_handler(SQLAlchemyError, _database_error_handler)
