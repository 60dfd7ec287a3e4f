"""Reading request bodies under limits, after the caller is authenticated.

FastAPI reads and parses a declared body (`UploadFile`, a Pydantic model) before any
dependency runs, so an anonymous client could make the API hold a whole body before hearing
401, and a limit could only be checked after memory had filled. Here routes authenticate
first (their key dependency runs before these functions), then read: a dataset zip streams to
disk chunk by chunk, images to classify and JSON stay in memory, and every limit stops the
read as soon as it is crossed (BodyLimitMiddleware bounds the raw bytes of every request).
"""

from __future__ import annotations

import re
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.config import get_settings
from app.core.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from app.services.wire import parse_json

FormT = TypeVar("FormT", bound=BaseModel)

# A body refused partway is not read any further: the connection is closed after the answer.
CLOSE_CONNECTION = {"Connection": "close"}

MAX_FIELD_BYTES = 64 * 1024  # a text field (name, fractions, seed, remove) is never larger
# Every form here has fewer than ten text fields: a body of thousands of them (each under the
# field cap, no file at all) was held whole before the form was checked (+484 MB).
MAX_TEXT_FIELDS = 32
MAX_TEXT_BYTES = 256 * 1024  # all text fields of one form together
# (A part's headers are bounded by python-multipart: 8 lines of 4 KB at most, else a 400.)
MULTIPART_OVERHEAD_BYTES = 1024 * 1024  # headers and text fields beside the file
# receive_files(file_fields={ANY_PART}): every part is a file, whatever its name (Custom
# Vision's clients send the image as `imageData`, `image`, or a part of any other name).
ANY_PART = "*"


@dataclass
class MultipartUpload:
    """The saved file part (if any) and the text fields of one multipart request."""

    file_path: Path | None = None
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


class _FormCollector:
    """python-multipart callbacks shared by both collectors: part headers and text fields.
    Subclasses decide what a file part is and where its bytes go."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._name: str | None = None
        self._in_file = False
        self._text = bytearray()
        self._text_fields = 0
        self._text_bytes = 0

    def on_part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._in_file = False
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
        filename = params.get(b"filename")
        self._in_file = self.start_file(
            self._name, filename.decode("utf-8", "replace") if filename is not None else None
        )
        if not self._in_file:
            self._text_fields += 1
            if self._text_fields > MAX_TEXT_FIELDS:
                raise PayloadTooLargeError(
                    f"the form has more than {MAX_TEXT_FIELDS} text fields",
                    headers=CLOSE_CONNECTION,
                )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._in_file:
            self.file_data(chunk)
        else:
            self._text += chunk
            self._text_bytes += len(chunk)
            if len(self._text) > MAX_FIELD_BYTES:
                raise PayloadTooLargeError(
                    f"form field {self._name!r} is too large", headers=CLOSE_CONNECTION
                )
            if self._text_bytes > MAX_TEXT_BYTES:
                raise PayloadTooLargeError(
                    f"the form's text fields are larger than {MAX_TEXT_BYTES} bytes together",
                    headers=CLOSE_CONNECTION,
                )

    def on_part_end(self) -> None:
        if self._in_file:
            self.end_file()
        elif self._name is not None:
            self.fields[self._name] = self._text.decode("utf-8", "replace")
        self._in_file = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def start_file(self, name: str, filename: str | None) -> bool:
        """Called for every part; True if it is a file part this collector takes."""
        raise NotImplementedError

    def file_data(self, chunk: bytes) -> None:
        raise NotImplementedError

    def end_file(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Release whatever a failed parse left behind."""


class _DiskFileCollector(_FormCollector):
    """Exactly one file part, streamed to a temporary file under a size limit."""

    def __init__(self, *, file_field: str, dest_dir: Path, max_file_bytes: int) -> None:
        super().__init__()
        self.file_field = file_field
        self.dest_dir = dest_dir
        self.max_file_bytes = max_file_bytes
        self.upload = MultipartUpload(fields=self.fields)
        self._file: IO[bytes] | None = None
        self._file_bytes = 0

    def start_file(self, name: str, filename: str | None) -> bool:
        if name != self.file_field:
            return False
        if self.upload.file_path is not None:
            raise BadRequestError(f"send exactly one `{self.file_field}` part")
        self.upload.filename = filename
        self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed in end_file)
            dir=self.dest_dir, prefix="upload-", suffix=".part", delete=False
        )
        self.upload.file_path = Path(self._file.name)
        return True

    def file_data(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file_bytes += len(chunk)
        if self._file_bytes > self.max_file_bytes:
            raise PayloadTooLargeError(
                f"the upload is larger than the limit of {self.max_file_bytes} bytes",
                headers=CLOSE_CONNECTION,
            )
        self._file.write(chunk)

    def end_file(self) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self) -> None:
        self.close()
        self.upload.discard()


@dataclass(frozen=True)
class UploadedFile:
    filename: str | None
    data: bytes


class _MemoryFilesCollector(_FormCollector):
    """Any number of small file parts (images to classify), kept in memory under limits."""

    def __init__(self, *, file_fields: frozenset[str], max_files: int, max_file_bytes: int):
        super().__init__()
        self.file_fields = file_fields
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.files: list[UploadedFile] = []
        self._filename: str | None = None
        self._data = bytearray()

    def start_file(self, name: str, filename: str | None) -> bool:
        if ANY_PART not in self.file_fields and name not in self.file_fields:
            return False
        if len(self.files) >= self.max_files:
            raise PayloadTooLargeError(
                f"at most {self.max_files} images per request", headers=CLOSE_CONNECTION
            )
        self._filename = filename
        self._data = bytearray()
        return True

    def file_data(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > self.max_file_bytes:
            raise PayloadTooLargeError(
                f"image {self._filename or len(self.files) + 1!r} is larger than the limit "
                f"of {self.max_file_bytes} bytes",
                headers=CLOSE_CONNECTION,
            )

    def end_file(self) -> None:
        self.files.append(UploadedFile(filename=self._filename, data=bytes(self._data)))
        self._data = bytearray()


def _multipart_boundary(request: Request, *, expected: str) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UnsupportedMediaTypeError(f"send multipart/form-data with {expected}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequestError("multipart/form-data without a boundary")
    return bytes(boundary)


def _check_declared_length(request: Request, *, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"the request ({declared} bytes) is larger than the limit of {limit} bytes",
            headers=CLOSE_CONNECTION,
        )


async def _parse(request: Request, boundary: bytes, collector: _FormCollector) -> None:
    parser = MultipartParser(boundary, callbacks=collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except BaseException as exc:
        collector.abort()
        if isinstance(exc, Exception) and not isinstance(
            exc, (PayloadTooLargeError, BadRequestError)
        ):
            raise BadRequestError(f"malformed multipart body ({exc})") from exc
        raise


async def receive_multipart(
    request: Request, *, file_field: str, dest_dir: Path, max_file_bytes: int
) -> MultipartUpload:
    """Parse a multipart/form-data body, streaming part `file_field` to a file in dest_dir."""
    boundary = _multipart_boundary(request, expected=f"the zip in a `{file_field}` part")
    _check_declared_length(request, limit=max_file_bytes + MULTIPART_OVERHEAD_BYTES)
    dest_dir.mkdir(parents=True, exist_ok=True)
    collector = _DiskFileCollector(
        file_field=file_field, dest_dir=dest_dir, max_file_bytes=max_file_bytes
    )
    await _parse(request, boundary, collector)
    collector.close()
    return collector.upload


async def receive_files(
    request: Request, *, file_fields: frozenset[str], max_files: int, max_file_bytes: int
) -> tuple[list[UploadedFile], dict[str, str]]:
    """Parse a multipart/form-data body of small files (kept in memory) and text fields;
    the whole body is at most `max_request_body_bytes`."""
    names = " or ".join(f"`{name}`" for name in sorted(file_fields))
    boundary = _multipart_boundary(request, expected=f"images in {names} parts")
    _check_declared_length(request, limit=get_settings().max_request_body_bytes)
    collector = _MemoryFilesCollector(
        file_fields=file_fields, max_files=max_files, max_file_bytes=max_file_bytes
    )
    await _parse(request, boundary, collector)
    return collector.files, collector.fields


def validate_form(schema: type[FormT], fields: dict[str, str]) -> FormT:
    """Text fields of a multipart form as `schema`; a bad field is a 422 naming it."""
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]
        ) from exc


# A dataset zip: a new dataset, or images added as a new version of one.
DATASET_UPLOAD_PATH = re.compile(r"^/datasets(/[^/]+/versions)?/?$")


def request_body_limit(method: str, path: str) -> int:
    """The most bytes a request to this route may send: a dataset zip, or anything else."""
    settings = get_settings()
    if method == "POST" and DATASET_UPLOAD_PATH.fullmatch(path):
        return settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    return settings.max_request_body_bytes


async def read_body(request: Request, *, limit: int) -> bytes:
    """The whole request body, at most `limit` bytes both as sent and after undoing a gzip or
    deflate Content-Encoding: a small compressed bomb is inflated chunk by chunk and refused
    as soon as its output passes the limit."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in {"identity", "gzip", "deflate"}:
        raise UnsupportedMediaTypeError(f"unsupported Content-Encoding {encoding!r}")
    _check_declared_length(request, limit=limit)
    inflater = None
    if encoding != "identity":
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    body = bytearray()
    sent = 0
    async for chunk in request.stream():
        sent += len(chunk)
        if sent > limit:
            raise PayloadTooLargeError(
                f"the request is larger than the limit of {limit} bytes", headers=CLOSE_CONNECTION
            )
        if inflater is None:
            body += chunk
            continue
        pending = chunk
        while pending:
            try:
                # Never more output than still fits (+1, to notice going over).
                body += inflater.decompress(pending, limit - len(body) + 1)
            except zlib.error as exc:
                raise BadRequestError(
                    f"the {encoding} body cannot be decompressed ({exc})"
                ) from exc
            if len(body) > limit:
                raise PayloadTooLargeError(
                    f"the decompressed request is larger than the limit of {limit} bytes",
                    headers=CLOSE_CONNECTION,
                )
            pending = inflater.unconsumed_tail
    return bytes(body)


async def read_json(request: Request, *, limit: int) -> Any:
    """The request's JSON body under `limit`, parsed off the event loop."""
    body = await read_body(request, limit=limit)
    return await run_in_threadpool(parse_json, body)


async def read_json_model(request: Request, schema: type[FormT]) -> FormT:
    """The request's JSON body as `schema` (422 naming the field that is wrong), at most
    `max_request_body_bytes`."""
    data = await read_json(request, limit=get_settings().max_request_body_bytes)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]
        ) from exc


def json_body_openapi(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that reads `schema` with read_json_model (FastAPI
    cannot see it; app.main adds the schema to the components)."""
    DOCUMENTED_BODIES.add(schema)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{schema.__name__}"}}
            },
        }
    }


def multipart_body_openapi(
    files: dict[str, dict[str, Any]], form: type[BaseModel], *, required: list[str] | None = None
) -> dict[str, Any]:
    """The OpenAPI requestBody of a multipart route that parses its parts itself (FastAPI
    cannot see them): the file parts `files` and the text fields of `form`."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {**files, **form.model_json_schema()["properties"]},
    }
    if required:
        schema["required"] = required
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }


# Models documented by json_body_openapi, for the OpenAPI components.
DOCUMENTED_BODIES: set[type[BaseModel]] = set()
