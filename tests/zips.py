"""Small generated images and zips for the dataset tests."""

from __future__ import annotations

import io
import random
import stat
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from PIL import Image


def image_bytes(
    fmt: str = "JPEG",
    *,
    size: tuple[int, int] = (48, 40),
    seed: int = 0,
    mode: str = "RGB",
    exif_orientation: int | None = None,
) -> bytes:
    """A random-noise image (distinct per seed, so no accidental duplicates) encoded as fmt."""
    rng = random.Random(seed)
    pixels = bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3))
    image = Image.frombytes("RGB", size, pixels)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    kwargs: dict[str, object] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def make_zip(
    files: Mapping[str, bytes],
    *,
    symlinks: Iterable[tuple[str, str]] = (),
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """A zip with these files (path -> bytes) and symbolic links (path -> target)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        for path, target in symlinks:
            info = zipfile.ZipInfo(path)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def class_folders(
    classes: Mapping[str, int], *, prefix: str = "", fmt: str = "JPEG", seed: int = 0
) -> dict[str, bytes]:
    """{prefix + class/img_i.jpg: bytes} with `count` distinct images per class."""
    files = {}
    for c, (label, count) in enumerate(classes.items()):
        for i in range(count):
            files[f"{prefix}{label}/img_{i}.jpg"] = image_bytes(fmt, seed=seed + 1000 * c + i)
    return files


SHARED = Path(__file__).resolve().parents[2] / "shared"
PHOTOS = SHARED / "data" / "cats_vs_dogs_small"


def tiny_photo_zip(
    path: Path, *, class_names: Mapping[str, str] | None = None, extra: Mapping[str, bytes] = {}
) -> Path:
    """A zip of real cats_vs_dogs photos: 8/4/4 per class in train/validation/test, the
    classes' folders named by `class_names` ({"cats": ..., "dogs": ...}), plus `extra` files."""
    names = class_names or {"cats": "cats", "dogs": "dogs"}
    with zipfile.ZipFile(path, "w") as archive:
        for split, count in (("train", 8), ("validation", 4), ("test", 4)):
            for label in ("cats", "dogs"):
                for image in sorted((PHOTOS / split / label).iterdir())[:count]:
                    archive.write(image, f"{split}/{names[label]}/{image.name}")
        for name, data in extra.items():
            archive.writestr(name, data)
    return path


# tiny_photo_zip puts this photo in test/cats; report_subjects() copies it into train too.
LEAKED_PHOTO = sorted((PHOTOS / "test" / "cats").iterdir())[0]


def report_subjects() -> dict[str, bytes]:
    """Files for tiny_photo_zip's `extra` that its ingest report must name: one that is not an
    image, a copy of a training photo (a duplicate) and a copy of a test photo in train
    (leakage: the test copy is removed)."""
    return {
        "train/cats/notes.txt": b"not an image",
        "train/cats/again.jpg": sorted((PHOTOS / "train" / "cats").iterdir())[0].read_bytes(),
        "train/cats/leaked.jpg": LEAKED_PHOTO.read_bytes(),
    }
