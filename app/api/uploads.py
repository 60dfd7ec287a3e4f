"""Streaming multipart parsing: the uploaded file goes to disk chunk by chunk, under a size limit.

FastAPI's `UploadFile` reads the whole body before the route runs, so a limit could only be
checked after the disk had filled. Here the limit stops the upload as soon as it is crossed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

MAX_FIELD_BYTES = 64 * 1024  # a text field (name, fractions, seed) is never larger
MULTIPART_OVERHEAD_BYTES = 1024 * 1024  # headers and text fields beside the file


@dataclass
class MultipartUpload:
    """The saved file part (if any) and the text fields of one multipart request."""

    file_path: Path | None = None
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


class _PartCollector:
    def __init__(self, *, file_field: str, dest_dir: Path, max_file_bytes: int) -> None:
        self.file_field = file_field
        self.dest_dir = dest_dir
        self.max_file_bytes = max_file_bytes
        self.upload = MultipartUpload()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._name: str | None = None
        self._file: IO[bytes] | None = None
        self._file_bytes = 0
        self._text = bytearray()

    def on_part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._text = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field = bytearray()
        self._header_value = bytearray()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", b""))
        name = params.get(b"name")
        if name is None:
            raise BadRequestError("a multipart part has no name")
        self._name = name.decode("utf-8", "replace")
        if self._name == self.file_field:
            if self.upload.file_path is not None:
                raise BadRequestError(f"send exactly one `{self.file_field}` part")
            filename = params.get(b"filename")
            self.upload.filename = filename.decode("utf-8", "replace") if filename else None
            self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed in on_part_end)
                dir=self.dest_dir, prefix="upload-", suffix=".part", delete=False
            )
            self.upload.file_path = Path(self._file.name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is not None:
            self._file_bytes += len(chunk)
            if self._file_bytes > self.max_file_bytes:
                raise PayloadTooLargeError(
                    f"the upload is larger than the limit of {self.max_file_bytes} bytes"
                )
            self._file.write(chunk)
        else:
            self._text += chunk
            if len(self._text) > MAX_FIELD_BYTES:
                raise PayloadTooLargeError(f"form field {self._name!r} is too large")

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._name is not None:
            self.upload.fields[self._name] = self._text.decode("utf-8", "replace")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def receive_multipart(
    request: Request, *, file_field: str, dest_dir: Path, max_file_bytes: int
) -> MultipartUpload:
    """Parse a multipart/form-data body, streaming part `file_field` to a file in dest_dir."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"send multipart/form-data with the zip in a `{file_field}` part"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequestError("multipart/form-data without a boundary")
    declared = request.headers.get("content-length")
    if (
        declared
        and declared.isdigit()
        and int(declared) > max_file_bytes + MULTIPART_OVERHEAD_BYTES
    ):
        raise PayloadTooLargeError(
            f"the upload ({declared} bytes) is larger than the limit of {max_file_bytes} bytes"
        )

    dest_dir.mkdir(parents=True, exist_ok=True)
    collector = _PartCollector(
        file_field=file_field, dest_dir=dest_dir, max_file_bytes=max_file_bytes
    )
    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": collector.on_part_begin,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except BaseException as exc:
        collector.close()
        collector.upload.discard()
        if isinstance(exc, Exception) and not isinstance(
            exc, (PayloadTooLargeError, BadRequestError)
        ):
            raise BadRequestError(f"malformed multipart body ({exc})") from exc
        raise
    collector.close()
    return collector.upload
