"""The JSON body of every error response, as documented in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="a code such as not_found (on /v1 and /v2: the message)")
    detail: Any = Field(
        default=None,
        description="what went wrong; for validation_error, a list of {loc, msg, type}",
    )


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# Answers any endpoint may give, whatever its own documented errors.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("no API key, or an invalid or revoked one"),
    403: _error("the API key lacks the scope this endpoint needs"),
    404: _error("no such resource, or it belongs to another owner"),
    422: _error("a field failed validation (detail names it)"),
    429: _error("over a rate or concurrency limit (see Retry-After)"),
    503: _error("the database or the broker is unreachable"),
}


# What an inference endpoint may also answer, whichever protocol it speaks.
INFERENCE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("malformed request or corrupt image"),
    409: _error("no trained model, or the model has no active version"),
    413: _error("an image or the request is over a limit"),
    415: _error("not an image, or an unsupported content type or encoding"),
}
