from __future__ import annotations

import io

import pytest
from PIL import Image

from app.ml.images import ImageDecodeError, decode_image, image_to_array
from tests.zips import image_bytes


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_transparency_becomes_white_not_black() -> None:
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    decoded = decode_image(_encoded(clear, "PNG"), max_pixels=100)
    assert decoded.image.mode == "RGB"
    assert image_to_array(decoded.image)[0, 0].tolist() == [255, 255, 255]


def test_exif_rotation_turns_pixels_not_just_sizes() -> None:
    upright = decode_image(image_bytes("JPEG", size=(8, 4), seed=3), max_pixels=100)
    rotated = decode_image(
        image_bytes("JPEG", size=(8, 4), seed=3, exif_orientation=6), max_pixels=100
    )
    assert (upright.width, upright.height) == (8, 4)
    assert (rotated.width, rotated.height) == (4, 8)


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageDecodeError, match="over the limit of 99"):
        decode_image(image_bytes("PNG", size=(10, 10)), max_pixels=99)


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"%PDF-1.4 not an image"])
def test_garbage_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data, max_pixels=10_000)


def test_unaccepted_formats_are_refused() -> None:
    with pytest.raises(ImageDecodeError, match="unsupported image format"):
        decode_image(_encoded(Image.new("RGB", (4, 4)), "ICO"), max_pixels=10_000)
