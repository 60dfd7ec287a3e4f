"""TensorFlow Serving's REST API (`/v1/models/...`): request and response encoding.

Images travel as `{"b64": "..."}` (TF Serving's binary-value convention), optionally wrapped
as `{"image_bytes": {"b64": "..."}}` (the Cloud ML Engine image convention). Predictions are
each image's class probabilities in label order (the model's metadata lists the labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.errors import BadRequestError
from app.services.inference import ImagePayload
from app.services.wire import decode_base64


@dataclass(frozen=True)
class ParsedPredict:
    images: list[ImagePayload]
    row_format: bool  # "instances" (answered as "predictions") or "inputs" ("outputs")


def _image_bytes(item: Any, index: int) -> bytes:
    """One instance: {"b64": ...}, {"image_bytes": {"b64": ...}} or {<any key>: {"b64": ...}}."""
    what = f"instance {index + 1}"
    if isinstance(item, dict) and len(item) == 1:
        ((key, value),) = item.items()
        if key == "b64" and isinstance(value, str):
            return decode_base64(value, what=what)
        if isinstance(value, dict) and isinstance(value.get("b64"), str) and len(value) == 1:
            return decode_base64(value["b64"], what=what)
    raise BadRequestError(f'{what}: expected {{"b64": "<base64 image>"}}')


def parse_predict_request(body: Any) -> ParsedPredict:
    """{"instances": [...]} (row format) or {"inputs": [...] | {"<name>": [...]}} (columnar)."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise BadRequestError('send either "instances" or "inputs"')
    key = "instances" if "instances" in body else "inputs"
    items = body[key]
    if isinstance(items, dict):  # columnar with a named input: {"inputs": {"image": [...]}}
        if len(items) != 1:
            raise BadRequestError(f'"{key}" must name exactly one input')
        (items,) = items.values()
    if not isinstance(items, list) or not items:
        raise BadRequestError(f'"{key}" must be a non-empty list of images')
    images = [ImagePayload(data=_image_bytes(item, i)) for i, item in enumerate(items)]
    return ParsedPredict(images=images, row_format=key == "instances")


def predict_response(parsed: ParsedPredict, probabilities: np.ndarray) -> dict[str, Any]:
    rows = probabilities.astype(float).tolist()
    return {"predictions": rows} if parsed.row_format else {"outputs": rows}


def version_status(versions: list[int]) -> dict[str, Any]:
    """GET /v1/models/{name}: every listed version AVAILABLE."""
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in versions
        ]
    }


def model_metadata(name: str, version: int, classes: list[str]) -> dict[str, Any]:
    """The serving signature: encoded images in, class probabilities out, and the labels."""
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {
                            "b64": {
                                "dtype": "DT_STRING",
                                "tensor_shape": {"dim": [{"size": "-1", "name": ""}]},
                                "name": "image_bytes",
                            }
                        },
                        "outputs": {
                            "probabilities": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": {
                                    "dim": [
                                        {"size": "-1", "name": ""},
                                        {"size": str(len(classes)), "name": ""},
                                    ]
                                },
                                "name": "probabilities",
                            }
                        },
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            },
            "labels": classes,
        },
    }
