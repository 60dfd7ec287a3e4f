"""Versioned model files on disk: atomic writes, checksums, manifests."""

from models_store.store import (
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
    "ChecksumMismatchError",
    "InvalidModelNameError",
    "ModelStore",
    "StoreError",
    "StoredVersion",
    "VersionExistsError",
    "file_sha256",
    "validate_name",
]
