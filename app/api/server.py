"""uvicorn's HTTP protocol with a deadline on request headers.

uvicorn times out idle keep-alive connections, but not a client that opens a connection and
sends its headers slowly or never (slowloris): each such connection would be held forever.
`python -m uvicorn app.main:app --http app.api.server:HeaderTimeoutProtocol` closes them with a
408 after `SMALLVISION_HEADER_READ_TIMEOUT_SECONDS`. (Request bodies have their own idle
timeout in app.api.middleware.BodyLimitMiddleware.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.config import get_settings

PROTOCOL = "app.api.server:HeaderTimeoutProtocol"  # the value of uvicorn's --http option

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\nconnection: close\r\n\r\nthe request headers took too long"
)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """From the connection's start (or a request's first byte) to the end of the headers,
    at most `header_read_timeout_seconds`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = get_settings().header_read_timeout_seconds
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()
