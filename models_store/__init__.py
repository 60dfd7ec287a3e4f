"""Where the service's files live (a local folder or an S3-compatible bucket) and the
versioned model files in it: atomic writes, checksums, manifests."""

from models_store.objects import (
    LocalObjectStore,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    S3Location,
    S3ObjectStore,
    StoredObject,
)
from models_store.store import (
    MANIFEST,
    ChecksumMismatchError,
    InvalidModelNameError,
    ModelStore,
    StoredVersion,
    StoreError,
    VersionExistsError,
    file_sha256,
    validate_name,
)

__all__ = [
    "MANIFEST",
    "ChecksumMismatchError",
    "InvalidModelNameError",
    "LocalObjectStore",
    "ModelStore",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectStoreError",
    "S3Location",
    "S3ObjectStore",
    "StoreError",
    "StoredObject",
    "StoredVersion",
    "VersionExistsError",
    "file_sha256",
    "validate_name",
]
