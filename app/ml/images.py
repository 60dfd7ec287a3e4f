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
    image: Image.Image  # RGB, EXIF orientation applied; maybe reduced (reduction_factors)
    source_format: str
    # The file's own width and height, upright: what `image` shows, before any reduction
    # (which may shrink one side more than the other).
    upright_size: tuple[int, int]

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


# Bumped whenever decoding gives other pixels for the same file (caches key on it).
# 3: each side is reduced on its own (a long thin image was reduced by its short side only).
DECODER_VERSION = 3

# Decoding for a model keeps each side at least this many times its input size, then the
# model's bilinear resize (to a square: it does not keep the aspect ratio) takes over: a
# 4000x3000 photo for a 160 px model becomes 333x333 by averaging boxes of 12x9 pixels,
# never a 36 million-value float32 array, and a 55000x890 strip becomes 322x445.
KEEP_TIMES_INPUT_SIZE = 2

# Pillow can average pixel boxes (Image.reduce) in these modes; others are converted first.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "PA"})
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # the orientations that turn the image a quarter


@dataclass
class OpenedImage:
    """An image whose header has been read and checked, not yet decoded."""

    image: Image.Image
    source_format: str
    # Bytes its decoding may hold at its peak (decoded buffer and one converted copy).
    decode_bytes: int
    target_size: int | None
    size: tuple[int, int]  # as stored in the file (before a JPEG draft or any orientation)


def reduction_factors(width: int, height: int, target_size: int | None) -> tuple[int, int]:
    """By how much each side of an image may be shrunk (box average) before a model of
    `target_size` px sees it: 1 (not at all) for a side shorter than twice
    KEEP_TIMES_INPUT_SIZE x target_size. Each side on its own, since the model resizes both
    to target_size: a long thin image is shrunk along its length, not kept at full size."""
    if target_size is None:
        return 1, 1
    keep = KEEP_TIMES_INPUT_SIZE * target_size
    return max(1, width // keep), max(1, height // keep)


def open_image(data: bytes, *, max_pixels: int, target_size: int | None = None) -> OpenedImage:
    """Read the header: format and size are checked before any pixel is decoded. With a
    target size, a JPEG is set to decode at a reduced scale (libjpeg's DCT scaling), so its
    full-resolution pixels never exist in memory."""
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
        across, down = reduction_factors(width, height, target_size)
        if max(across, down) > 1 and source_format in {"JPEG", "MPO"}:
            # libjpeg scales both sides alike, by at most the smaller factor
            image.draft(image.mode, (width // across, height // down))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError("not an image file") from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"corrupt image data ({exc})") from exc
    bands = max(len(image.getbands()), 1)
    decoded_width, decoded_height = image.size  # after draft: the reduced JPEG scale
    decode_bytes = decoded_width * decoded_height * max(bands, 3) * 2
    return OpenedImage(
        image=image,
        source_format=source_format,
        decode_bytes=decode_bytes,
        target_size=target_size,
        size=(width, height),
    )


def decode_opened(opened: OpenedImage) -> DecodedImage:
    """Decode an opened image to upright RGB: first frame of animations, shrunk by box
    averaging when far larger than the target size, EXIF rotation applied, grayscale /
    palette / CMYK converted, transparency composited on white."""
    image = opened.image
    try:
        image.load()
        orientation = image.getexif().get(_EXIF_ORIENTATION)
        factors = reduction_factors(image.width, image.height, opened.target_size)
        if max(factors) > 1:
            if image.mode not in _REDUCIBLE_MODES:
                image = image.convert("L") if image.mode == "1" else _to_rgb(image)
            image = image.reduce(factors)
            if orientation in _UPRIGHT:
                image = image.transpose(_UPRIGHT[orientation])
            upright = image
        else:
            upright = ImageOps.exif_transpose(image) or image
        rgb = _to_rgb(upright)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        # Truncated or corrupt data surfaces as any of these from Pillow's decoders.
        raise CorruptImageError(f"corrupt image data ({exc})") from exc
    width, height = opened.size
    upright_size = (height, width) if orientation in _SWAPS_SIDES else (width, height)
    return DecodedImage(image=rgb, source_format=opened.source_format, upright_size=upright_size)


def decode_image(data: bytes, *, max_pixels: int, target_size: int | None = None) -> DecodedImage:
    """Decode image bytes to upright RGB (see decode_opened). With a target size (the input
    size of the model the pixels are for), an image much larger than that is decoded at a
    reduced scale; training and serving both decode this way, so they see the same pixels."""
    return decode_opened(open_image(data, max_pixels=max_pixels, target_size=target_size))


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
