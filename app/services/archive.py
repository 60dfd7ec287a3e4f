"""Reading an uploaded zip safely: no path tricks, no links, no bombs."""

from __future__ import annotations

import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

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


# The zip format's records (APPNOTE 4.3): end of central directory, its zip64 locator and
# record, and a central directory file header (46 bytes before its three variable fields).
_END = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_DIRECTORY_ENTRY = struct.Struct("<4s4B4HL2L5H2L")
_MAX_COMMENT = 0xFFFF


def _central_directory(handle: IO[bytes]) -> tuple[int, int, int]:
    """(declared entries, directory size, directory start) from the end records."""
    size = handle.seek(0, 2)
    tail_start = max(0, size - _END.size - _MAX_COMMENT)
    handle.seek(tail_start)
    tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END.size:
        raise BadRequestError("the zip archive is damaged (no end of central directory)")
    end_position = tail_start + at
    _, _, _, _, entries, directory_size, _, _ = _END.unpack_from(tail, at)
    locator_at = at - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == b"PK\x06\x07":
        _, _, zip64_end_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        handle.seek(zip64_end_offset)
        record = handle.read(_ZIP64_END.size)
        if len(record) == _ZIP64_END.size and record[:4] == b"PK\x06\x06":
            fields = _ZIP64_END.unpack(record)
            entries, directory_size = fields[7], fields[8]
            end_position = tail_start + locator_at - _ZIP64_END.size
    return entries, directory_size, end_position - directory_size


def check_entry_count(path: Path, *, max_entries: int) -> None:
    """Refuse an archive with more than `max_entries` entries before zipfile reads it:
    zipfile.ZipFile builds an object for every entry it finds (2 million entries cost
    ~900 MB). The end record's count is checked first; then the directory itself is walked
    header by header without keeping anything, since zipfile trusts the directory's bytes,
    not that count."""
    with path.open("rb") as handle:
        entries, directory_size, start = _central_directory(handle)
        if entries > max_entries:
            raise PayloadTooLargeError(
                f"the zip has {entries} entries, more than the limit of {max_entries}"
            )
        if start < 0:
            raise BadRequestError("the zip archive is damaged (central directory out of range)")
        handle.seek(start)
        walked = counted = 0
        while walked < directory_size:
            header = handle.read(_DIRECTORY_ENTRY.size)
            if len(header) < _DIRECTORY_ENTRY.size or header[:4] != b"PK\x01\x02":
                break  # zipfile reports the damage
            fields = _DIRECTORY_ENTRY.unpack(header)
            variable = fields[12] + fields[13] + fields[14]  # name, extra field, comment
            handle.seek(variable, 1)
            walked += _DIRECTORY_ENTRY.size + variable
            counted += 1
            if counted > max_entries:
                raise PayloadTooLargeError(
                    f"the zip's directory holds more entries than the limit of {max_entries}"
                )


def open_zip(path: Path, *, max_entries: int) -> zipfile.ZipFile:
    """Open the upload as a zip (415 if it is not one, 413 if it has too many entries)."""
    if not zipfile.is_zipfile(path):
        raise UnsupportedMediaTypeError("the upload is not a zip archive")
    check_entry_count(path, max_entries=max_entries)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadRequestError(f"the zip archive is damaged ({exc})") from exc
