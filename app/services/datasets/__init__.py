"""Datasets: labeled images as immutable versions.

- `ingest`: the one pipeline that turns a zip, labeled files and a parent version's images into
  a version's folder (plan, decode, deduplicate, check, split, statistics, manifest); no
  database.
- `label_lists`: a zip's labels.csv / labels.jsonl, parsed line by line (no files read).
- `files`: a version's stored files (publish, manifest, images, removal, cached features).
- `crud`: the rows: an upload (the first version), reading, listing, deleting.
- `versions`: the versions of a lineage: resolving one, listing them, adding one.
"""

from app.services.datasets.crud import (
    IngestOptions,
    delete_dataset,
    get_dataset,
    ingest_zip,
    list_datasets,
)
from app.services.datasets.files import load_manifest, local_images, read_image, remove_features
from app.services.datasets.ingest import (
    MAX_CLASS_NAME_CHARS,
    LabeledImage,
    require_two_classes,
)
from app.services.datasets.versions import (
    VersionOptions,
    add_version,
    list_versions,
    resolve_dataset_version,
)

__all__ = [
    "MAX_CLASS_NAME_CHARS",
    "IngestOptions",
    "LabeledImage",
    "VersionOptions",
    "add_version",
    "delete_dataset",
    "get_dataset",
    "ingest_zip",
    "list_datasets",
    "list_versions",
    "load_manifest",
    "local_images",
    "read_image",
    "remove_features",
    "require_two_classes",
    "resolve_dataset_version",
]
