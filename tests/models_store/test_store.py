"""The models store's guarantees, on a local folder and on a real S3 API (moto's server)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models_store import (
    ChecksumMismatchError,
    InvalidModelNameError,
    LocalObjectStore,
    ModelStore,
    ObjectStore,
    S3Location,
    S3ObjectStore,
    VersionExistsError,
)
from tests.conftest import bucket_keys


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "build"
    (folder / "assets").mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"weights" * 100)
    (folder / "labels.json").write_text('["cats", "dogs"]')
    (folder / "assets" / "extra.txt").write_text("x")
    return folder


def s3_objects(settings: dict[str, str], tmp_path: Path) -> S3ObjectStore:
    location = S3Location(
        bucket=settings["S3_BUCKET"],
        prefix="tenant-a/models/",
        endpoint_url=settings["S3_ENDPOINT_URL"],
        region="us-east-1",
    )
    return S3ObjectStore(location, staging_root=tmp_path / "staging")


@pytest.fixture(params=["local", "s3"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "store")
    return s3_objects(request.getfixturevalue("s3_settings"), tmp_path)


@pytest.fixture
def store(objects: ObjectStore, tmp_path: Path) -> ModelStore:
    return ModelStore(objects, cache_dir=tmp_path / "cache")


def test_write_then_verify_round_trip(store: ModelStore, source: Path) -> None:
    stored = store.write_version(name="pets", version=1, source_dir=source, metadata={"a": 1})
    assert stored.relative_path == "pets/v1"
    assert len(stored.sha256) == 64
    folder = store.verified_path("pets/v1", expected_sha256=stored.sha256)
    assert (folder / "model.keras").read_bytes() == b"weights" * 100
    manifest = store.read_manifest("pets/v1")
    assert set(manifest["files"]) == {"model.keras", "labels.json", "assets/extra.txt"}
    assert manifest["metadata"] == {"a": 1}
    assert stored.size_bytes > 700
    assert sorted(found.key for found in store.objects.keys("")) == [
        "pets/v1/MANIFEST.json",
        "pets/v1/assets/extra.txt",
        "pets/v1/labels.json",
        "pets/v1/model.keras",
    ]
    assert store.latest_version("pets") == 1
    assert store.latest_version("cats") == 0


def test_a_changed_file_or_wrong_checksum_is_refused(store: ModelStore, source: Path) -> None:
    stored = store.write_version(name="pets", version=1, source_dir=source, metadata={})
    with pytest.raises(ChecksumMismatchError, match="expected"):
        store.verified_path("pets/v1", expected_sha256="0" * 64)
    store.objects.put_bytes("pets/v1/model.keras", b"tampered")
    assert store.cache_dir is not None
    for cached in store.cache_dir.glob("*/model.keras"):  # a bucket's download, too
        cached.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatchError, match=r"model\.keras is missing or changed"):
        store.verified_path("pets/v1", expected_sha256=stored.sha256)


def test_a_bucket_version_is_downloaded_once_and_checked_on_the_way(
    s3_settings: dict[str, str], tmp_path: Path, source: Path
) -> None:
    objects = s3_objects(s3_settings, tmp_path)
    writer = ModelStore(objects, cache_dir=tmp_path / "writer-cache")
    stored = writer.write_version(name="pets", version=1, source_dir=source, metadata={})
    # Another machine: its own cache, nothing shared but the bucket.
    reader = ModelStore(objects, cache_dir=tmp_path / "reader-cache")
    objects.put_bytes("pets/v1/labels.json", b'["tampered"]')
    with pytest.raises(ChecksumMismatchError, match=r"labels\.json is missing or changed"):
        reader.verified_path("pets/v1", expected_sha256=stored.sha256)
    assert not any((tmp_path / "reader-cache").iterdir())  # nothing half-downloaded is kept
    objects.put_file("pets/v1/labels.json", source / "labels.json")
    folder = reader.verified_path("pets/v1", expected_sha256=stored.sha256)
    assert folder.parent == tmp_path / "reader-cache"
    assert (folder / "assets" / "extra.txt").read_text() == "x"
    assert reader.verified_path("pets/v1", expected_sha256=stored.sha256) == folder


def test_versions_are_never_overwritten(store: ModelStore, source: Path) -> None:
    store.write_version(name="pets", version=1, source_dir=source, metadata={})
    with pytest.raises(VersionExistsError):
        store.write_version(name="pets", version=1, source_dir=source, metadata={})


def test_added_files_replace_the_manifest_in_one_write(store: ModelStore, source: Path) -> None:
    stored = store.write_version(name="pets", version=1, source_dir=source, metadata={"a": 1})
    extra = source.parent / "model.onnx"
    extra.write_bytes(b"onnx")
    added = store.add_files(
        "pets/v1",
        expected_sha256=stored.sha256,
        sources={"model.onnx": extra},
        metadata={"exports": {"onnx": "ok"}},
    )
    assert added.sha256 != stored.sha256
    folder = store.verified_path("pets/v1", expected_sha256=added.sha256)
    assert (folder / "model.onnx").read_bytes() == b"onnx"
    assert store.read_manifest("pets/v1")["metadata"] == {"a": 1, "exports": {"onnx": "ok"}}
    if store.objects.local_path("pets/v1") is not None:
        with pytest.raises(ChecksumMismatchError):
            store.verified_path("pets/v1", expected_sha256=stored.sha256)
    # (A machine that downloaded the version before keeps its checked copy under the old
    # checksum; what the database records now is the new one.)


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 101, "sp ace"])
def test_unsafe_names_are_refused(tmp_path: Path, source: Path, name: str) -> None:
    with pytest.raises(InvalidModelNameError):
        ModelStore(LocalObjectStore(tmp_path)).write_version(
            name=name, version=1, source_dir=source, metadata={}
        )


def test_a_disk_full_write_leaves_no_version_and_no_staging(
    store: ModelStore, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import shutil

    import models_store.store as store_module

    real_copy = shutil.copyfile
    copies = []

    def copy_until_disk_is_full(src, dst):
        if copies:
            raise OSError(errno.ENOSPC, "No space left on device")
        copies.append(src)
        return real_copy(src, dst)

    monkeypatch.setattr(store_module.shutil, "copyfile", copy_until_disk_is_full)
    with pytest.raises(OSError, match="No space left"):
        store.write_version(name="pets", version=1, source_dir=source, metadata={})
    assert copies  # the first file was written before the disk "filled"
    assert list(store.objects.keys("")) == []
    fresh = store.objects.staging_folder()
    assert list(fresh.parent.iterdir()) == [fresh]  # the failed write's staging folder is gone


def test_delete_removes_the_version(store: ModelStore, source: Path) -> None:
    stored = store.write_version(name="pets", version=1, source_dir=source, metadata={})
    store.verified_path("pets/v1", expected_sha256=stored.sha256)
    store.delete_version("pets/v1")
    assert list(store.objects.keys("")) == []
    with pytest.raises(ChecksumMismatchError):
        store.verified_path("pets/v1", expected_sha256=stored.sha256)
    with pytest.raises(Exception, match="not a valid object key"):
        store.delete_version("../../etc")


CRASH_BEFORE_MANIFEST = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from models_store import ModelStore, S3Location, S3ObjectStore
    import models_store.objects as objects

    bucket, endpoint, source, cache = sys.argv[1:5]
    store = S3ObjectStore(
        S3Location(bucket=bucket, prefix="tenant-a/models/", endpoint_url=endpoint),
        staging_root=Path(cache),
    )
    upload = store.put_file

    def die_at_the_manifest(key, path):
        if key.endswith("MANIFEST.json"):
            os._exit(9)  # the process dies: no cleanup of any kind runs
        upload(key, path)

    store.put_file = die_at_the_manifest
    ModelStore(store, cache_dir=Path(cache)).write_version(
        name="pets", version=1, source_dir=Path(source), metadata={}
    )
    """
)


def test_a_crash_before_the_manifest_leaves_no_version(
    s3_settings: dict[str, str], tmp_path: Path, source: Path
) -> None:
    crashed = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASH_BEFORE_MANIFEST,
            s3_settings["S3_BUCKET"],
            s3_settings["S3_ENDPOINT_URL"],
            str(source),
            str(tmp_path / "crash-cache"),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert crashed.returncode == 9, crashed.stderr
    left = bucket_keys(s3_settings)
    assert "tenant-a/models/pets/v1/model.keras" in left  # the files made it, the manifest not
    assert not any(key.endswith("MANIFEST.json") for key in left)
    store = ModelStore(s3_objects(s3_settings, tmp_path), cache_dir=tmp_path / "cache")
    with pytest.raises(ChecksumMismatchError, match=r"has no MANIFEST\.json"):
        store.verified_path("pets/v1", expected_sha256="0" * 64)
    # The half-made version's number is never handed out again...
    assert store.latest_version("pets") == 1
    with pytest.raises(VersionExistsError):
        store.write_version(name="pets", version=1, source_dir=source, metadata={})
    # ...and the next one is whole.
    stored = store.write_version(name="pets", version=2, source_dir=source, metadata={})
    manifest = json.loads(
        (
            store.verified_path("pets/v2", expected_sha256=stored.sha256) / "MANIFEST.json"
        ).read_text()
    )
    assert manifest["version"] == 2
