"""Decoding uploaded image files into upright RGB pixels, the same for training and serving."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own guard (a warning, then an error at twice the limit) is replaced by ours, which
# checks the header's size before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None

# Formats a user may upload; the bytes decide, never the file extension.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "MPO"})


class ImageDecodeError(ValueError):
    """The bytes are not an image this service accepts; the message says why."""


class UnsupportedImageError(ImageDecodeError):
    """Not an image at all, or a format the service does not accept."""


class CorruptImageError(ImageDecodeError):
    """An accepted format whose data cannot be decoded (truncated, damaged)."""


class ImageTooLargeError(ImageDecodeError):
    """More pixels than the configured limit (checked from the header, before decoding)."""


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    source_format: str

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode image bytes to upright RGB: first frame of animations, EXIF rotation applied,
    grayscale/palette/CMYK converted, transparency composited on white."""
    try:
        image = Image.open(io.BytesIO(data))
        source_format = image.format or "unknown"
        if source_format not in ACCEPTED_FORMATS:
            raise UnsupportedImageError(f"unsupported image format {source_format}")
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels}"
            )
        image.seek(0)  # first frame of a GIF/WebP animation or multi-page TIFF
        image.load()
        upright = ImageOps.exif_transpose(image) or image
        rgb = _to_rgb(upright)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError("not an image file") from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        # Truncated or corrupt data surfaces as any of these from Pillow's decoders.
        raise CorruptImageError(f"corrupt image data ({exc})") from exc
    return DecodedImage(image=rgb, source_format=source_format)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything to white.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8))
    return image.convert("RGB")


def image_to_array(image: Image.Image) -> np.ndarray:
    """An RGB image as a uint8 array of shape (height, width, 3)."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
