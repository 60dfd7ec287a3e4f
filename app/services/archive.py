"""Reading an uploaded zip safely: no path tricks, no links, no bombs."""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.core.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

# Compression ratios are only judged on entries this large: a tiny file can compress far
# (a 4 KB blank PNG) without being a bomb, and cannot fill a disk.
RATIO_CHECK_MIN_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "Icon\r"})


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int
    max_total_bytes: int
    max_ratio: float


@dataclass(frozen=True)
class ArchiveMember:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]  # path components, normalised

    @property
    def path(self) -> str:
        return "/".join(self.parts)


def is_junk(parts: tuple[str, ...]) -> bool:
    """macOS/Windows metadata and hidden files, ignored without a word."""
    return parts[0] == "__MACOSX" or any(p.startswith(".") or p in JUNK_NAMES for p in parts)


def _safe_parts(name: str) -> tuple[str, ...]:
    if "\x00" in name:
        raise BadRequestError(f"zip entry {name!r} has a NUL byte in its name")
    normalised = name.replace("\\", "/")
    if (
        normalised.startswith("/")
        or PurePosixPath(normalised).is_absolute()
        or (len(normalised) > 1 and normalised[1] == ":")
    ):
        raise BadRequestError(f"zip entry {name!r} has an absolute path")
    parts = tuple(p for p in normalised.split("/") if p not in {"", "."})
    if ".." in parts:
        raise BadRequestError(f"zip entry {name!r} points outside the archive ('..')")
    return parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def list_members(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[ArchiveMember]:
    """Every regular file of the archive, after checking all entries against the limits."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise PayloadTooLargeError(
            f"the zip has {len(infos)} entries, more than the limit of {limits.max_entries}"
        )
    total = 0
    members: list[ArchiveMember] = []
    for info in infos:
        parts = _safe_parts(info.filename)
        if _is_symlink(info):
            raise BadRequestError(f"zip entry {info.filename!r} is a symbolic link")
        if info.is_dir() or not parts:
            continue
        if info.flag_bits & 0x1:
            raise BadRequestError(f"zip entry {info.filename!r} is encrypted")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise PayloadTooLargeError(
                f"the zip would unpack to more than the limit of {limits.max_total_bytes} bytes"
            )
        if info.file_size >= RATIO_CHECK_MIN_BYTES:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > limits.max_ratio:
                raise BadRequestError(
                    f"zip entry {info.filename!r} expands {ratio:.0f}x "
                    f"(limit {limits.max_ratio:g}x): refused as a zip bomb"
                )
        members.append(ArchiveMember(info=info, parts=parts))
    return members


class EntryTooLargeError(ValueError):
    pass


def read_member(archive: zipfile.ZipFile, member: ArchiveMember, *, max_bytes: int) -> bytes:
    """The entry's bytes, refusing to inflate past its declared size or max_bytes (a zip
    header can lie about the size; the inflated stream is what counts)."""
    limit = min(member.info.file_size, max_bytes)
    if member.info.file_size > max_bytes:
        raise EntryTooLargeError(f"{member.info.file_size} bytes, over the limit of {max_bytes}")
    chunks: list[bytes] = []
    read = 0
    with archive.open(member.info) as stream:
        while chunk := stream.read(READ_CHUNK_BYTES):
            read += len(chunk)
            if read > limit:
                raise EntryTooLargeError("inflates past its declared size")
            chunks.append(chunk)
    return b"".join(chunks)


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open the upload as a zip, or 415 if it is not one."""
    if not zipfile.is_zipfile(path):
        raise UnsupportedMediaTypeError("the upload is not a zip archive")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadRequestError(f"the zip archive is damaged ({exc})") from exc
