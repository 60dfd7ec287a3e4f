"""The storage areas and each machine's cache of bucket objects."""

from __future__ import annotations

import os
from pathlib import Path

from app.services.storage import TRIM_GRACE_SECONDS, get_storage, trim_cache


def _entry(path: Path, size: int, used: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (used, used))
    return path


def test_the_cache_drops_the_least_recently_used_copies_but_not_those_in_use(
    configure, s3_settings
) -> None:
    configure(**s3_settings)
    storage = get_storage()
    assert not storage.is_local
    now = 1_000_000.0
    old = now - 10 * TRIM_GRACE_SECONDS
    oldest_image = _entry(storage.image_cache / "images" / "aa" / "aa1", 100, old)
    model = storage.cache_dir / "models" / ("b" * 64)
    _entry(model / "model.keras", 300, old)
    os.utime(model, (old + 1, old + 1))
    features = _entry(storage.cache_dir / "features" / "owner" / "f.npz", 200, old + 2)
    in_use = _entry(storage.image_cache / "images" / "cc" / "cc1", 500, now - 10)

    assert trim_cache(storage, max_bytes=1200, now=now) == 0  # 1100 bytes: under the bound
    # Over it: the least recently used go first, until the cache fits...
    assert trim_cache(storage, max_bytes=700, now=now) == 400
    assert not oldest_image.exists() and not model.exists()
    assert features.exists() and in_use.exists()
    # ...but what was used within the grace period stays, even over the bound.
    assert trim_cache(storage, max_bytes=1, now=now) == 200
    assert not features.exists() and in_use.exists()


def test_local_storage_keeps_no_copies_to_trim(configure) -> None:
    settings = configure()
    storage = get_storage()
    assert storage.is_local
    _entry(storage.image_cache / "images" / "aa" / "aa1", 100, 0.0)
    assert trim_cache(storage, max_bytes=1) == 0
    assert storage.datasets.local_path("x/manifest.json") == settings.datasets_dir / "x" / (
        "manifest.json"
    )
