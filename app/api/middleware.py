"""Plain ASGI middleware, so streaming bodies pass through untouched:

- `RequestContextMiddleware`: a request id (taken from `X-Request-ID` or made), one structured
  log line and the Prometheus metrics of every request, and a JSON 500 naming that id for any
  failure nothing else handled (never a traceback to the client);
- `RequestLimitsMiddleware`: every request is bounded before the app reads it: a NUL character
  in its path or query is a 422 (PostgreSQL cannot store one, and no name here has one), a
  declared `Content-Length` over the route's limit is refused at once, a body that grows past
  it while streaming is cut off, and a client that stops sending its body is timed out.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, internal_error_response
from app.core.logging import request_id_var
from app.core.metrics import HTTP_LATENCY, HTTP_REQUESTS

logger = logging.getLogger("smallvision.request")

REQUEST_ID_HEADER = "x-request-id"
# A client-sent id is kept only if it is short and plain (it ends up in logs and headers).
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _route_template(scope: Scope) -> str:
    """The matched route's path template (`/jobs/{job_id}`), never the raw path: one metric
    series per route, whatever ids the clients send."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


# The fixed words of Custom Vision's paths. Its portal and quickstarts spell some capitalised
# (`/customvision/v3.0/Prediction/...`); the service's routes are lower case, so these words
# are lowered before routing. Ids and published names (any other segment) keep their case.
CUSTOM_VISION_WORDS = frozenset(
    {
        "customvision",
        "training",
        "prediction",
        "domains",
        "projects",
        "tags",
        "images",
        "iterations",
        "classify",
        "detect",
        "image",
        "url",
        "nostore",
        "files",
        "tagged",
        "untagged",
        "count",
        "id",
        "publish",
        "export",
        "performance",
        "train",
        "predictions",
        "query",
        "quicktest",
        "regions",
        "metadata",
        "suggested",
        "artifacts",
        "import",
        "urls",
        "regionproposals",
        "tagsandregions",
        "suggestions",
    }
)


class CustomVisionPathMiddleware:
    """`/CustomVision/V3.0/Prediction/...` (and `//customvision/...`) routes as
    `/customvision/v3.0/prediction/...`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.lstrip("/")[:13].lower() == "customvision/":
            # (an endpoint set with a trailing slash, as the portal shows it, makes the SDK
            # send `//customvision/...`)
            parts = ("/" + path.lstrip("/")).split("/")
            for index, part in enumerate(parts):
                lowered = part.lower()
                if lowered in CUSTOM_VISION_WORDS or (index == 2 and lowered.startswith("v3.")):
                    parts[index] = lowered
            scope = {**scope, "path": "/".join(parts)}
            scope.pop("raw_path", None)  # (routing reads `path`; a stale raw path would not match)
        await self.app(scope, receive, send)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent_id = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = sent_id if _SAFE_REQUEST_ID.fullmatch(sent_id) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                headers: list[Any] = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Whatever no handler knew: logged with the request id, answered with that id only.
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not response_started:
                response = internal_error_response(scope["path"])
                await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route, method = _route_template(scope), scope["method"]
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(seconds)
            logger.info(
                "%s %s %s",
                method,
                scope["path"],
                status,
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
            request_id_var.reset(token)


_CLOSE = {"Connection": "close"}


class BodyTooLargeError(HTTPException):
    """Raised from `receive` when the body passes its limit. An HTTPException, so FastAPI's
    own body parsing passes it on instead of calling it a malformed body."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the request body is larger than the limit of {limit} bytes",
            headers=_CLOSE,  # the rest of the body is not wanted: drop the connection
        )


class BodyTimeoutError(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"no request body data arrived for {seconds:g} s", headers=_CLOSE)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


class RequestLimitsMiddleware:
    """Bound every request body: `limit_for(method, path)` gives the largest body a route takes
    (in bytes as sent, before any Content-Encoding is undone)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit_for: Callable[[str, str], int],
        idle_timeout: Callable[[], float],
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"].lower():
            response = error_response(
                scope["path"],
                "validation_error",
                "the path or query holds a NUL character",
                status_code=422,
            )
            await response(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            # Refused from the headers alone: not one byte of the body is read.
            response = error_response(
                scope["path"],
                "payload_too_large",
                f"the request ({declared} bytes) is larger than the limit of {limit} bytes",
                status_code=413,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        timeout = self.idle_timeout()
        received = 0
        body_done = False

        async def bounded_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                # The body is complete: later calls wait for a disconnect (streaming
                # responses listen for it), which may take as long as the response does.
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise BodyTimeoutError(timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)
