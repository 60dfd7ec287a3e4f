"""A stored version in other formats: the files behind
`GET /models/{name}/versions/{v}/download?format=...` and the exports workers build.

`.keras` and ONNX are files of the version itself (onnx.py adds ONNX to versions saved without
it). A SavedModel archive, and the formats for devices (TFLite float32, float16 and full
integer, ONNX int8) are built by a worker (a TensorFlow export takes seconds and gigabytes the
API must not spend): tracking.py asks for them and reads them back, builds.py builds them,
edge.py checks a device format on held-out images before it is handed over, bundles.py zips
any format with its labels, preprocessing and a runnable example.
"""

from app.services.exports.builds import build_now, run_export
from app.services.exports.bundles import bundle, bundle_name, version_documents
from app.services.exports.docker import serve_package
from app.services.exports.formats import (
    BUILT_ON_DEMAND,
    EDGE_FORMATS,
    DownloadFormat,
    download_name,
    media_type,
)
from app.services.exports.onnx import add_onnx_export, stored_versions, version_file
from app.services.exports.serving import int8_file, set_serving_precision
from app.services.exports.tracking import (
    RETRY_AFTER_SECONDS,
    list_exports,
    ready_file,
    refuse_degraded,
    refuse_failed,
    request_after_training,
    request_export,
)

__all__ = [
    "BUILT_ON_DEMAND",
    "EDGE_FORMATS",
    "RETRY_AFTER_SECONDS",
    "DownloadFormat",
    "add_onnx_export",
    "build_now",
    "bundle",
    "bundle_name",
    "download_name",
    "int8_file",
    "list_exports",
    "media_type",
    "ready_file",
    "refuse_degraded",
    "refuse_failed",
    "request_after_training",
    "request_export",
    "run_export",
    "serve_package",
    "set_serving_precision",
    "stored_versions",
    "version_documents",
    "version_file",
]
