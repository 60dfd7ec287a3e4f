"""Clients that open a connection and then stall are cut off (a live uvicorn, as deployed)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import api_key, migrate
from tests.processes import free_port, running_api


@pytest.fixture
def server(configure, sqlite_url: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    configure(
        database_url=sqlite_url, HEADER_READ_TIMEOUT_SECONDS="1", BODY_READ_TIMEOUT_SECONDS="1"
    )
    migrate(sqlite_url)
    port = free_port()
    with running_api(tmp_path / "api.log", port=port):
        yield "127.0.0.1", port


def _until_closed(sock: socket.socket, *, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    sock.settimeout(limit)
    started, received = time.monotonic(), b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open for {limit} s") from None
        if not chunk:
            return received, time.monotonic() - started
        received += chunk


def test_a_client_that_never_finishes_its_headers_is_cut_off(server) -> None:
    with socket.create_connection(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line
        received, seconds = _until_closed(sock, limit=8)
    assert received.startswith(b"HTTP/1.1 408"), received
    assert seconds < 5


def test_a_silent_connection_is_cut_off(server) -> None:
    with socket.create_connection(server) as sock:
        _, seconds = _until_closed(sock, limit=8)
    assert seconds < 5


def _post_and_stall(server: tuple[str, int], *, declared: int, sent: bytes) -> bytes:
    """POST /jobs with a valid key, promising `declared` bytes of body, sending only `sent`;
    what the server answers before it closes the connection (within 5 s)."""
    with socket.create_connection(server) as sock:
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + api_key("train").encode() + b"\r\n"
            b"Content-Length: " + str(declared).encode() + b"\r\n\r\n" + sent
        )
        received, seconds = _until_closed(sock, limit=8)
    assert seconds < 5
    return received


def test_a_client_that_promises_a_body_and_sends_nothing_is_408(server) -> None:
    # 10 MB is under the body limit: only the silence is wrong
    received = _post_and_stall(server, declared=10_000_000, sent=b"")
    assert received.split(b"\r\n", 1)[0] == b"HTTP/1.1 408 Request Timeout", received[:200]


def test_a_body_that_stalls_midway_is_408(server) -> None:
    received = _post_and_stall(server, declared=1000, sent=b'{"dataset_id": ')
    assert received.split(b"\r\n", 1)[0] == b"HTTP/1.1 408 Request Timeout", received[:200]
    assert b"request_timeout" in received
