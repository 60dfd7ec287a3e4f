"""The guards of images fetched by URL for the Custom Vision API: nothing of the service's own
network is reached for a caller."""

from __future__ import annotations

import pytest

from app.services.customvision.errors import CustomVisionError
from app.services.customvision.urls import check_url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/image.jpg",
        "http://localhost/image.jpg",
        "http://10.0.0.7/image.jpg",
        "http://192.168.1.1/image.jpg",
        "http://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
        "http://[::1]/image.jpg",
        "http://0.0.0.0/image.jpg",
        "ftp://example.com/image.jpg",
        "file:///etc/passwd",
        "http:///no-host",
        "http://" + "a" * 3000 + ".com/",
    ],
)
def test_urls_into_the_services_own_network_or_not_http_are_refused(url: str) -> None:
    with pytest.raises(CustomVisionError) as refused:
        check_url(url, allow_private=False)
    assert refused.value.code == "BadRequestImageUrl"


def test_a_deployment_may_allow_private_addresses() -> None:
    check_url("http://127.0.0.1:8000/image.jpg", allow_private=True)
    with pytest.raises(CustomVisionError):
        check_url("gopher://127.0.0.1/", allow_private=True)
