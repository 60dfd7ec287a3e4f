"""Versioned models in an object store (a local folder or a bucket): `<name>/v<version>/`.

A version holds the model files and `MANIFEST.json` (every file's sha256 and size, plus
free-form metadata). The version's checksum is the sha256 of that manifest, so one
64-character string recorded in the database vouches for every byte of the version. The
manifest is written last: a version without one does not exist (a crash left it half made).
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

from models_store.objects import ObjectExistsError, ObjectNotFoundError, ObjectStore

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


class ModelStore:
    """Versioned model folders in an object store. On a bucket, versions are downloaded into
    `cache_dir` (one folder per manifest checksum) when they are loaded."""

    def __init__(self, objects: ObjectStore, *, cache_dir: Path | None = None) -> None:
        self.objects = objects
        self.cache_dir = cache_dir

    def write_version(
        self, *, name: str, version: int, source_dir: Path, metadata: dict[str, Any]
    ) -> StoredVersion:
        """Copy every file of source_dir into version `version` of model `name`, atomically:
        the files are assembled in a staging folder and published with the manifest last."""
        validate_name(name)
        relative = f"{name}/v{version}"
        staging = self.objects.staging_folder()
        try:
            files: dict[str, dict[str, Any]] = {}
            for source in sorted(p for p in source_dir.rglob("*") if p.is_file()):
                relative_file = source.relative_to(source_dir).as_posix()
                target = staging / relative_file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                files[relative_file] = {
                    "sha256": file_sha256(target),
                    "size": target.stat().st_size,
                }
            manifest = {"name": name, "version": version, "files": files, "metadata": metadata}
            manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
            (staging / MANIFEST).write_bytes(manifest_bytes)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            self.objects.publish_folder(staging, relative, commit_file=MANIFEST)
        except ObjectExistsError as exc:
            raise VersionExistsError(f"{relative} already exists in the models store") from exc
        return StoredVersion(
            relative_path=relative,
            sha256=hashlib.sha256(manifest_bytes).hexdigest(),
            size_bytes=sum(entry["size"] for entry in files.values()) + len(manifest_bytes),
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
        change: the version is verified first, the new files are stored under their own keys,
        then the manifest (with the new files and `metadata` merged into its metadata)
        replaces the old one in one write. The caller records the returned checksum; until it
        does, the old checksum no longer matches."""
        folder = self.verified_path(relative_path, expected_sha256=expected_sha256)
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
        for relative_file, source in sorted(sources.items()):
            if relative_file == MANIFEST or relative_file in manifest["files"]:
                raise VersionExistsError(f"{relative_path}/{relative_file} already exists")
            self.objects.put_file(f"{relative_path}/{relative_file}", source)
            manifest["files"][relative_file] = {
                "sha256": file_sha256(source),
                "size": source.stat().st_size,
            }
        manifest["metadata"] = {**manifest.get("metadata", {}), **metadata}
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        self.objects.put_bytes(f"{relative_path}/{MANIFEST}", manifest_bytes)
        return StoredVersion(
            relative_path=relative_path,
            sha256=hashlib.sha256(manifest_bytes).hexdigest(),
            size_bytes=sum(e["size"] for e in manifest["files"].values()) + len(manifest_bytes),
        )

    def latest_version(self, name: str) -> int:
        """The highest version number with any file under `name` (0 if none): versions left
        half made by a crash, never registered, count too, so their numbers are not reused."""
        numbers = {
            int(match.group(1))
            for found in self.objects.keys(f"{validate_name(name)}/")
            if (match := _VERSION_FOLDER.fullmatch(found.key.split("/")[1]))
        }
        return max(numbers, default=0)

    def verified_path(self, relative_path: str, *, expected_sha256: str) -> Path:
        """A local folder holding the version, after checking the manifest and every file
        against it: the version's own folder in a local store, a cached download otherwise."""
        manifest_key = f"{relative_path}/{MANIFEST}"
        local = self.objects.local_path(manifest_key)
        if local is not None:
            if not local.is_file():
                raise ChecksumMismatchError(f"{relative_path} has no {MANIFEST}")
            return _verified(local.parent, relative_path, expected_sha256=expected_sha256)
        if self.cache_dir is None:
            raise StoreError("a models store in a bucket needs a local cache folder")
        cached = self.cache_dir / expected_sha256
        if cached.is_dir():
            os.utime(cached)  # used now: a cache trim removes the least recently used
            return _verified(cached, relative_path, expected_sha256=expected_sha256)
        return self._download(relative_path, cached, expected_sha256=expected_sha256)

    def _download(self, relative_path: str, cached: Path, *, expected_sha256: str) -> Path:
        try:
            manifest_bytes = self.objects.get_bytes(f"{relative_path}/{MANIFEST}")
        except ObjectNotFoundError as exc:
            raise ChecksumMismatchError(f"{relative_path} has no {MANIFEST}") from exc
        _check_manifest(manifest_bytes, relative_path, expected_sha256=expected_sha256)
        manifest = json.loads(manifest_bytes)
        assert self.cache_dir is not None
        partial = self.cache_dir / f".{expected_sha256}.{uuid.uuid4().hex}"
        try:
            partial.mkdir(parents=True)
            self.objects.download_many(
                (f"{relative_path}/{name}", partial / name) for name in manifest["files"]
            )
            (partial / MANIFEST).write_bytes(manifest_bytes)
            _verified(partial, relative_path, expected_sha256=expected_sha256)
            try:
                partial.rename(cached)
            except OSError:
                if not cached.is_dir():  # not another download of the same version winning
                    raise
        except ObjectNotFoundError as exc:
            raise ChecksumMismatchError(f"{relative_path}: {exc}") from exc
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return cached

    def read_manifest(self, relative_path: str) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(self.objects.get_bytes(f"{relative_path}/{MANIFEST}"))
        return manifest

    def delete_version(self, relative_path: str) -> None:
        """Remove a version: its manifest first, so it stops existing at once, then its files."""
        self.objects.delete(f"{relative_path}/{MANIFEST}")
        self.objects.delete_prefix(f"{relative_path}/")
        if self.cache_dir is not None and self.cache_dir.is_dir():
            for cached in self.cache_dir.iterdir():
                if cached.is_dir() and (cached / MANIFEST).is_file():
                    manifest = json.loads((cached / MANIFEST).read_text())
                    if f"{manifest.get('name')}/v{manifest.get('version')}" == relative_path:
                        shutil.rmtree(cached, ignore_errors=True)


def _check_manifest(data: bytes, relative_path: str, *, expected_sha256: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ChecksumMismatchError(
            f"{relative_path}/{MANIFEST} has sha256 {actual}, expected {expected_sha256}"
        )


def _verified(folder: Path, relative_path: str, *, expected_sha256: str) -> Path:
    """`folder` if its manifest has the expected checksum and every file matches it."""
    manifest_bytes = (folder / MANIFEST).read_bytes()
    _check_manifest(manifest_bytes, relative_path, expected_sha256=expected_sha256)
    for relative_file, entry in json.loads(manifest_bytes)["files"].items():
        path = folder / relative_file
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            raise ChecksumMismatchError(f"{relative_path}/{relative_file} is missing or changed")
    return folder
