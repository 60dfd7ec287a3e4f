from __future__ import annotations

from pathlib import Path

import pytest

from models_store import (
    ChecksumMismatchError,
    InvalidModelNameError,
    ModelStore,
    VersionExistsError,
)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "build"
    (folder / "assets").mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"weights" * 100)
    (folder / "labels.json").write_text('["cats", "dogs"]')
    (folder / "assets" / "extra.txt").write_text("x")
    return folder


def test_write_then_verify_round_trip(tmp_path: Path, source: Path) -> None:
    store = ModelStore(tmp_path / "store")
    stored = store.write_version(name="pets", version=1, source_dir=source, metadata={"a": 1})
    assert stored.relative_path == "pets/v1"
    assert len(stored.sha256) == 64
    folder = store.verified_path("pets/v1", expected_sha256=stored.sha256)
    assert (folder / "model.keras").read_bytes() == b"weights" * 100
    manifest = store.read_manifest("pets/v1")
    assert set(manifest["files"]) == {"model.keras", "labels.json", "assets/extra.txt"}
    assert manifest["metadata"] == {"a": 1}
    assert stored.size_bytes > 700
    assert not any((tmp_path / "store" / ".staging").iterdir())


def test_a_changed_file_or_wrong_checksum_is_refused(tmp_path: Path, source: Path) -> None:
    store = ModelStore(tmp_path / "store")
    stored = store.write_version(name="pets", version=1, source_dir=source, metadata={})
    with pytest.raises(ChecksumMismatchError, match="expected"):
        store.verified_path("pets/v1", expected_sha256="0" * 64)
    (tmp_path / "store" / "pets" / "v1" / "model.keras").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatchError, match=r"model\.keras is missing or changed"):
        store.verified_path("pets/v1", expected_sha256=stored.sha256)


def test_versions_are_never_overwritten(tmp_path: Path, source: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.write_version(name="pets", version=1, source_dir=source, metadata={})
    with pytest.raises(VersionExistsError):
        store.write_version(name="pets", version=1, source_dir=source, metadata={})


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 101, "sp ace"])
def test_unsafe_names_are_refused(tmp_path: Path, source: Path, name: str) -> None:
    with pytest.raises(InvalidModelNameError):
        ModelStore(tmp_path).write_version(name=name, version=1, source_dir=source, metadata={})


def test_a_disk_full_write_leaves_no_version_and_no_staging(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
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
    store = ModelStore(tmp_path / "store")
    with pytest.raises(OSError, match="No space left"):
        store.write_version(name="pets", version=1, source_dir=source, metadata={})
    assert copies  # the first file was written before the disk "filled"
    assert not (tmp_path / "store" / "pets" / "v1").exists()
    assert not any((tmp_path / "store" / ".staging").iterdir())


def test_delete_removes_the_version(tmp_path: Path, source: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.write_version(name="pets", version=1, source_dir=source, metadata={})
    store.delete_version("pets/v1")
    assert not (tmp_path / "store" / "pets" / "v1").exists()
    with pytest.raises(Exception, match="outside"):
        store.delete_version("../../etc")
