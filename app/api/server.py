"""uvicorn's HTTP protocol with a deadline on request headers and a cap on their size.

uvicorn times out idle keep-alive connections, but not a client that opens a connection and
sends its headers slowly or never (slowloris): each such connection would be held forever.
Nor does its httptools protocol cap the headers' size: a 400 MB header was buffered whole,
and parsing it held the event loop for seconds (every other request waited).
`python -m uvicorn app.main:app --http app.api.server:HeaderTimeoutProtocol` closes the first
with a 408 after `SMALLVISION_HEADER_READ_TIMEOUT_SECONDS` and answers the second with a 431
as soon as a request's line and headers pass `SMALLVISION_MAX_HEADER_BYTES`. (Request bodies
have their own limits in app.api.middleware.RequestLimitsMiddleware.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.config import get_settings

PROTOCOL = "app.api.server:HeaderTimeoutProtocol"  # the value of uvicorn's --http option


def _plain_response(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text
    )


_REQUEST_TIMEOUT = _plain_response(b"408 Request Timeout", b"the request headers took too long")
_HEADERS_TOO_LARGE = _plain_response(
    b"431 Request Header Fields Too Large", b"the request line and headers are too large"
)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """From the connection's start (or the end of the previous request) to the end of the
    headers: at most `header_read_timeout_seconds`, and at most `max_header_bytes` bytes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout = settings.header_read_timeout_seconds
        self.max_header_bytes = settings.max_header_bytes
        self._header_deadline: asyncio.TimerHandle | None = None
        self._reading_headers = True
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        # While headers are being read, the parser is fed no more than the room left under
        # the cap, so it never buffers more than that; the rest of a chunk that completed
        # the headers (the body's start) goes on as usual.
        while data and self._reading_headers and not self.transport.is_closing():
            room = self.max_header_bytes - self._header_bytes
            if room <= 0:
                self._refuse(_HEADERS_TOO_LARGE)
                return
            piece, data = data[:room], data[room:]
            self._header_bytes += len(piece)
            super().data_received(piece)
        if data and not self.transport.is_closing():
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._reading_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next request on this connection (keep-alive) has its own allowance.
        self._reading_headers = True
        self._header_bytes = 0

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
        self._refuse(_REQUEST_TIMEOUT)

    def _refuse(self, response: bytes) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()
