"""A directory of versioned models: `<root>/<name>/v<version>/`, each written atomically.

A version directory holds the model files and `MANIFEST.json` (every file's sha256 and size,
plus free-form metadata). The version's checksum is the sha256 of that manifest, so one
64-character string recorded in the database vouches for every byte of the version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_VERSION_FOLDER = re.compile(r"v([0-9]{1,10})")
_CHUNK = 1024 * 1024


class StoreError(Exception):
    """Base of the models store's errors."""


class InvalidModelNameError(StoreError):
    pass


class VersionExistsError(StoreError):
    pass


class ChecksumMismatchError(StoreError):
    """A stored version's files differ from what was recorded: never load it."""


@dataclass(frozen=True)
class StoredVersion:
    relative_path: str  # relative to the store root, e.g. "cats/v3"
    sha256: str  # of MANIFEST.json
    size_bytes: int  # all files, manifest included


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or name in {".", ".."}:
        raise InvalidModelNameError(
            f"model name {name!r} must be 1-100 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """Versioned model directories under one root (shared storage in production)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def version_path(self, relative_path: str) -> Path:
        path = (self.root / relative_path).resolve()
        if self.root.resolve() not in path.parents:
            raise StoreError(f"{relative_path!r} is outside the models store")
        return path

    def write_version(
        self, *, name: str, version: int, source_dir: Path, metadata: dict[str, Any]
    ) -> StoredVersion:
        """Copy every file of source_dir into version `version` of model `name`, atomically:
        the files land in a temporary folder that is renamed into place only when complete."""
        validate_name(name)
        relative = f"{name}/v{version}"
        final = self.root / relative
        if final.exists():
            raise VersionExistsError(f"{relative} already exists in the models store")
        staging = self.root / ".staging" / uuid.uuid4().hex
        try:
            staging.mkdir(parents=True)
            files: dict[str, dict[str, Any]] = {}
            for source in sorted(p for p in source_dir.rglob("*") if p.is_file()):
                relative_file = source.relative_to(source_dir).as_posix()
                target = staging / relative_file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                with target.open("rb") as handle:
                    os.fsync(handle.fileno())
                files[relative_file] = {
                    "sha256": file_sha256(target),
                    "size": target.stat().st_size,
                }
            manifest = {"name": name, "version": version, "files": files, "metadata": metadata}
            manifest_path = staging / MANIFEST
            manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
            with manifest_path.open("rb") as handle:
                os.fsync(handle.fileno())
            _fsync_directory(staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(final)  # atomic on one filesystem: the version appears whole or not
            _fsync_directory(final.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
        return StoredVersion(
            relative_path=relative, sha256=file_sha256(final / MANIFEST), size_bytes=size
        )

    def add_files(
        self,
        relative_path: str,
        *,
        expected_sha256: str,
        sources: dict[str, Path],
        metadata: dict[str, Any],
    ) -> StoredVersion:
        """Add files made later (an export) to a stored version, whose other files never
        change: the version is verified first, the new files are copied in under temporary
        names and renamed, then the manifest (with the new files and `metadata` merged into
        its metadata) replaces the old one in one rename. The caller records the returned
        checksum; until it does, the old checksum no longer matches."""
        folder = self.verified_path(relative_path, expected_sha256=expected_sha256)
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
        for relative_file, source in sorted(sources.items()):
            if relative_file == MANIFEST or relative_file in manifest["files"]:
                raise VersionExistsError(f"{relative_path}/{relative_file} already exists")
            target = self.version_path(f"{relative_path}/{relative_file}")
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            shutil.copyfile(source, partial)
            with partial.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, target)
            manifest["files"][relative_file] = {
                "sha256": file_sha256(target),
                "size": target.stat().st_size,
            }
        manifest["metadata"] = {**manifest.get("metadata", {}), **metadata}
        partial_manifest = folder / f".{MANIFEST}.{uuid.uuid4().hex}"
        partial_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        with partial_manifest.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial_manifest, folder / MANIFEST)
        _fsync_directory(folder)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        return StoredVersion(
            relative_path=relative_path, sha256=file_sha256(folder / MANIFEST), size_bytes=size
        )

    def latest_version(self, name: str) -> int:
        """The highest version number with a folder under `name` (0 if none): folders left by a
        crash that were never registered count too, so their numbers are not handed out."""
        folder = self.root / validate_name(name)
        if not folder.is_dir():
            return 0
        numbers = [
            int(match.group(1))
            for child in folder.iterdir()
            if (match := _VERSION_FOLDER.fullmatch(child.name))
        ]
        return max(numbers, default=0)

    def verified_path(self, relative_path: str, *, expected_sha256: str) -> Path:
        """The version's directory after checking the manifest and every file against it."""
        folder = self.version_path(relative_path)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise ChecksumMismatchError(f"{relative_path} has no {MANIFEST}")
        actual = file_sha256(manifest_path)
        if actual != expected_sha256:
            raise ChecksumMismatchError(
                f"{relative_path}/{MANIFEST} has sha256 {actual}, expected {expected_sha256}"
            )
        manifest = json.loads(manifest_path.read_text())
        for relative_file, entry in manifest["files"].items():
            path = folder / relative_file
            if not path.is_file() or file_sha256(path) != entry["sha256"]:
                raise ChecksumMismatchError(
                    f"{relative_path}/{relative_file} is missing or changed"
                )
        return folder

    def read_manifest(self, relative_path: str) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(
            (self.version_path(relative_path) / MANIFEST).read_text()
        )
        return manifest

    def delete_version(self, relative_path: str) -> None:
        """Remove a version directory (moved aside first, so it vanishes at once)."""
        folder = self.version_path(relative_path)
        if not folder.exists():
            return
        trash = self.root / ".trash" / uuid.uuid4().hex
        trash.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
