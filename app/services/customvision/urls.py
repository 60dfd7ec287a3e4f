"""Fetching an image a Custom Vision caller names by URL, without letting the caller reach
this service's own network: http(s) only, every address the host resolves to must be public
(no loopback, private, link-local, multicast or reserved one, unless the deployment allows
them), redirects are followed by hand (each one checked again, at most 3), the body is cut
at the size limit, and the whole fetch has a deadline."""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import httpx

from app.services.customvision.errors import CustomVisionError

MAX_REDIRECTS = 3
MAX_URL_CHARS = 2048


def _refused(message: str) -> CustomVisionError:
    return CustomVisionError("BadRequestImageUrl", message)


def check_url(url: str, *, allow_private: bool) -> None:
    """BadRequestImageUrl unless `url` is http(s) to a host whose every address may be
    reached."""
    if len(url) > MAX_URL_CHARS:
        raise _refused(f"a URL has at most {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refused("the image URL is not an http(s) URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(parts.hostname, port)}
    except (OSError, ValueError) as exc:
        raise _refused(f"the image URL's host does not resolve ({exc})") from exc
    if allow_private:
        return
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise _refused(
                f"the image URL's host is at {ip}, a loopback, private or link-local address: "
                "only public addresses are fetched"
            )


def fetch_image(url: str, *, max_bytes: int, timeout: float, allow_private: bool) -> bytes:
    """The image file at `url` (BadRequestImageUrl if it cannot be fetched as an image file
    of at most `max_bytes`)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(follow_redirects=False, timeout=timeout) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, allow_private=allow_private)
            try:
                with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise _refused(f"the image URL answered {response.status_code}")
                    data = bytearray()
                    for chunk in response.iter_bytes():
                        data += chunk
                        if len(data) > max_bytes:
                            raise CustomVisionError(
                                "BadRequestImageSizeBytes",
                                f"the image at the URL is larger than {max_bytes} bytes",
                            )
                        if time.monotonic() > deadline:
                            raise _refused(f"the image URL took longer than {timeout:g} s")
                    return bytes(data)
            except httpx.HTTPError as exc:
                raise _refused(f"the image URL could not be fetched ({exc})") from exc
    raise _refused(f"the image URL redirects more than {MAX_REDIRECTS} times")
