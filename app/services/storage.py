"""The service's storage areas (datasets, models, features, review images, explanations) on
the configured backend: local folders, or prefixes of one S3-compatible bucket."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
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
    # The Custom Vision compatible API's project images (by project and content hash).
    projects: ObjectStore
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
            projects=LocalObjectStore(settings.data_dir / "projects"),
            cache_dir=settings.cache_dir,
        )
    assert settings.s3_bucket is not None  # Settings refuses s3 without a bucket
    root = settings.s3_prefix.strip("/")
    root = f"{root}/" if root else ""

    def area(name: str) -> S3ObjectStore:
        location = S3Location(
            bucket=settings.s3_bucket or "",
            prefix=f"{root}{name}/",
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
        return S3ObjectStore(location, staging_root=settings.cache_dir)

    return Storage(
        backend="s3",
        datasets=area("datasets"),
        models=area("models"),
        features=area("features"),
        review=area("review"),
        explanations=area("explanations"),
        projects=area("projects"),
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


# Cached copies used this recently stay whatever the cache's size: a job or a model load on
# this machine may be reading them right now.
TRIM_GRACE_SECONDS = 900.0


def _cached_entries(storage: Storage) -> list[tuple[float, int, Path]]:
    """(last used, bytes, path) of every cached copy: image files, model version folders
    (touched when used), feature files and model export archives."""
    entries: list[tuple[float, int, Path]] = []
    files = [
        *(storage.image_cache / "images").glob("*/*"),
        *(storage.cache_dir / "features").glob("*/*"),
        *(storage.cache_dir / "exports").glob("*"),
    ]
    for path in files:
        if path.is_file() and not path.name.startswith("."):
            stat = path.stat()
            entries.append((stat.st_mtime, stat.st_size, path))
    models = storage.cache_dir / "models"
    for folder in models.iterdir() if models.is_dir() else ():
        if folder.is_dir() and not folder.name.startswith("."):
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            entries.append((folder.stat().st_mtime, size, folder))
    return entries


def trim_cache(storage: Storage, *, max_bytes: int, now: float | None = None) -> int:
    """Remove this machine's least recently used copies of bucket objects until the cache
    holds at most `max_bytes` (sparing those used within TRIM_GRACE_SECONDS); returns the
    bytes freed. Nothing to do for local storage, which keeps no copies."""
    if storage.is_local:
        return 0
    entries = sorted(_cached_entries(storage))
    total = sum(size for _, size, _ in entries)
    now = time.time() if now is None else now
    freed = 0
    for used, size, path in entries:
        if total - freed <= max_bytes or now - used < TRIM_GRACE_SECONDS:
            break
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        freed += size
    return freed
