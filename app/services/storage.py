"""The service's storage areas (datasets, models, features, review images, explanations) on
the configured backend: local folders, or prefixes of one S3-compatible bucket."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from app.core.config import Settings, get_settings
from models_store import (
    LocalObjectStore,
    ModelStore,
    ObjectNotFoundError,
    ObjectStore,
    S3Location,
    S3ObjectStore,
)


@dataclass(frozen=True)
class Storage:
    backend: str
    datasets: ObjectStore
    models: ObjectStore
    features: ObjectStore
    review: ObjectStore
    explanations: ObjectStore
    # This machine's copies of objects read from a bucket (unused by local storage).
    cache_dir: Path

    @property
    def is_local(self) -> bool:
        return self.backend == "local"

    def model_store(self) -> ModelStore:
        return ModelStore(self.models, cache_dir=self.cache_dir / "models")

    @property
    def image_cache(self) -> Path:
        """Dataset images read from a bucket, by content hash (`images/<aa>/<sha256>`, the
        layout of a dataset's own folder): shared by every dataset on this machine."""
        return self.cache_dir / "datasets"


def build_storage(settings: Settings) -> Storage:
    """The storage areas `settings` describe (nothing is contacted yet)."""
    if settings.storage_backend == "local":
        return Storage(
            backend="local",
            datasets=LocalObjectStore(settings.datasets_dir),
            models=LocalObjectStore(settings.models_dir),
            features=LocalObjectStore(settings.feature_cache_dir),
            review=LocalObjectStore(settings.review_dir),
            explanations=LocalObjectStore(settings.data_dir / "explanations"),
            cache_dir=settings.cache_dir,
        )
    assert settings.s3_bucket is not None  # Settings refuses s3 without a bucket
    root = settings.s3_prefix.strip("/")
    root = f"{root}/" if root else ""

    def area(name: str) -> S3ObjectStore:
        location = S3Location(
            bucket=settings.s3_bucket or "", prefix=f"{root}{name}/",
            endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
        )  # fmt: skip
        return S3ObjectStore(location, staging_root=settings.cache_dir)

    return Storage(
        backend="s3",
        datasets=area("datasets"),
        models=area("models"),
        features=area("features"),
        review=area("review"),
        explanations=area("explanations"),
        cache_dir=settings.cache_dir,
    )


_built: tuple[Settings, Storage] | None = None
_lock = threading.Lock()


def get_storage() -> Storage:
    """The process's Storage, built once per Settings object (its clients are reused)."""
    global _built
    settings = get_settings()
    with _lock:
        if _built is None or _built[0] is not settings:
            _built = (settings, build_storage(settings))
        return _built[1]


def owner_key(owner: str | None) -> str:
    """An owner's folder name: the owner's name is not a path, a digest keeps it out of the
    file system's (and the bucket's) grammar."""
    return hashlib.sha256(f"owner:{owner}".encode()).hexdigest()[:32]


class ObjectMirror:
    """A cache folder's shared copy under `folder/` of an object store (features.CacheMirror)."""

    def __init__(self, objects: ObjectStore, folder: str) -> None:
        self.objects = objects
        self.folder = folder

    def pull(self, name: str, target: Path) -> bool:
        try:
            self.objects.download(f"{self.folder}/{name}", target)
        except ObjectNotFoundError:
            return False
        return True

    def push(self, name: str, source: Path) -> None:
        self.objects.put_file(f"{self.folder}/{name}", source)
