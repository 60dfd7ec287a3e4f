"""The Open Inference Protocol v2 (KServe, Triton): request and response encoding.

A model here takes one BYTES input (encoded image files, shape [N] or [N, 1]) and gives
  - `probabilities`: FP32 [N, classes], in label order;
  - `label`: BYTES [N], the most likely label of each image.
Both JSON tensors and the binary tensor extension (`Inference-Header-Content-Length`, the
default of the `tritonclient` package) are understood, and the classification extension
(`"classification": k` on a requested output gives "probability:index:label" strings).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from app.core.errors import BadRequestError, PayloadTooLargeError
from app.schemas.open_inference import InferRequest, RequestedOutput
from app.services.inference import RUNTIME_HEADER, ImagePayload, PredictionResult
from app.services.wire import decode_base64, parse_json

HEADER_LENGTH = "Inference-Header-Content-Length"
PROBABILITIES = "probabilities"
LABEL = "label"
OUTPUTS = (PROBABILITIES, LABEL)
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class ParsedInfer:
    request: InferRequest
    images: list[ImagePayload]


def parse_bytes_tensor(buffer: bytes) -> list[bytes]:
    """The binary BYTES layout: each element as a 4-byte little-endian length, then bytes."""
    elements, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise BadRequestError("truncated BYTES tensor: a length prefix is cut short")
        (size,) = _LENGTH.unpack_from(buffer, offset)
        offset += 4
        if offset + size > len(buffer):
            raise BadRequestError("truncated BYTES tensor: an element is shorter than declared")
        elements.append(buffer[offset : offset + size])
        offset += size
    return elements


def serialize_bytes_tensor(elements: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def _elements(data: Any) -> list[Any]:
    """The elements of JSON tensor data of shape [N] or [N, 1]: flat, or nested one level
    (deeper nesting cannot be either shape)."""
    if not isinstance(data, list):
        raise BadRequestError("JSON tensor data must be a list")
    elements = []
    for item in data:
        if isinstance(item, list):
            if len(item) != 1 or isinstance(item[0], list):
                raise BadRequestError("JSON BYTES data must have the shape [N] or [N, 1]")
            item = item[0]
        elements.append(item)
    return elements


def parse_infer_request(body: bytes, *, header_length: str | None, max_images: int) -> ParsedInfer:
    """Split the body into the JSON header and binary tensors; return the images."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequestError(f"{HEADER_LENGTH} {header_length!r} does not fit the body")
        split = int(header_length)
        header_bytes, binary = body[:split], body[split:]
    else:
        header_bytes, binary = body, b""
    try:
        request = InferRequest.model_validate(
            parse_json(header_bytes, what="the inference request")
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadRequestError(f"invalid inference request: {problems}") from exc
    if len(request.inputs) != 1:
        raise BadRequestError("send exactly one input: the encoded images (BYTES)")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise BadRequestError(
            f"input {tensor.name!r} must be BYTES (encoded image files), not {tensor.datatype}"
        )
    if (
        not 1 <= len(tensor.shape) <= 2
        or any(d < 1 for d in tensor.shape)
        or (len(tensor.shape) == 2 and tensor.shape[1] != 1)
    ):
        raise BadRequestError(f"input shape must be [N] or [N, 1], not {tensor.shape}")
    count = tensor.shape[0]
    if count > max_images:
        raise PayloadTooLargeError(f"at most {max_images} images per request")

    binary_size = tensor.parameters.get("binary_data_size")
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size != len(binary):
            raise BadRequestError(
                f"binary_data_size {binary_size!r} does not match the {len(binary)} bytes sent"
            )
        elements = parse_bytes_tensor(binary)
    else:
        if binary:
            raise BadRequestError("binary data sent but no input declares binary_data_size")
        leaves = _elements(tensor.data) if tensor.data is not None else []
        if not all(isinstance(leaf, str) for leaf in leaves):
            raise BadRequestError("JSON BYTES data must be base64 strings of image files")
        elements = [
            decode_base64(leaf, what=f"element {i + 1} of {tensor.name!r}")
            for i, leaf in enumerate(leaves)
        ]
    if len(elements) != count:
        raise BadRequestError(f"shape {tensor.shape} says {count} images, {len(elements)} sent")
    for requested in request.outputs or []:
        if requested.name not in OUTPUTS:
            raise BadRequestError(f"unknown output {requested.name!r}: choose from {OUTPUTS}")
        classification = requested.parameters.get("classification")
        if classification is not None and (
            not isinstance(classification, int)
            or isinstance(classification, bool)
            or classification < 1
        ):
            raise BadRequestError("the classification parameter must be a positive integer")
    return ParsedInfer(request=request, images=[ImagePayload(data=e) for e in elements])


def _classification(probabilities: np.ndarray, classes: list[str], k: int) -> list[list[bytes]]:
    k = min(k, len(classes))
    rows = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")[:k]
        rows.append([f"{row[i]:.6f}:{i}:{classes[i]}".encode() for i in order])
    return rows


def build_infer_response(
    parsed: ParsedInfer, result: PredictionResult
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: JSON only, or a JSON header and binary tensors."""
    request = parsed.request
    default_binary = bool(request.parameters.get("binary_data_output", False))
    requested = request.outputs or [RequestedOutput(name=name) for name in OUTPUTS]
    probabilities = result.probabilities.astype(np.float32)
    count = len(probabilities)
    outputs: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for output in requested:
        binary = bool(output.parameters.get("binary_data", default_binary))
        classification = output.parameters.get("classification")
        tensor: dict[str, Any] = {"name": output.name}
        data: list[Any]
        if classification is not None:
            rows = _classification(probabilities, result.classes, classification)
            flat: list[bytes] = [item for row in rows for item in row]
            tensor.update(datatype="BYTES", shape=[count, len(rows[0]) if rows else 0])
            raw, data = serialize_bytes_tensor(flat), [item.decode() for item in flat]
        elif output.name == PROBABILITIES:
            tensor.update(datatype="FP32", shape=list(probabilities.shape))
            raw, data = probabilities.tobytes(), probabilities.flatten().tolist()
        else:
            labels = [result.classes[int(i)] for i in probabilities.argmax(axis=1)]
            tensor.update(datatype="BYTES", shape=[count])
            raw, data = serialize_bytes_tensor([label.encode() for label in labels]), labels
        if binary:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            tensor["data"] = data
        outputs.append(tensor)
    response: dict[str, Any] = {
        "model_name": result.version.name,
        "model_version": str(result.version.version),
        "outputs": outputs,
        "parameters": {"runtime": result.runtime},
    }
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response).encode()
    runtime = {RUNTIME_HEADER: result.runtime}
    if not buffers:
        return header, {"Content-Type": "application/json", **runtime}
    return header + b"".join(buffers), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
        **runtime,
    }


def model_metadata(
    name: str, versions: list[int], classes: list[str], image_size: int
) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": "keras",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(classes)]},
            {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"labels": classes, "image_size": image_size},
    }
