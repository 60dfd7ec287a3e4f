"""A stored version in other formats: ONNX added to versions saved without it, and the
archives behind `GET /models/{name}/versions/{v}/download?format=...`."""

from __future__ import annotations

import enum
import json
import logging
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.core.config import get_settings
from app.core.errors import NotFoundError
from app.db.locks import lock_key, model_name_key
from app.db.models import ModelVersion
from app.db.session import session_scope
from app.ml.export import ONNX_FILE
from app.ml.serving import META_FILE, MODEL_FILE, load_keras_model
from app.services import model_versions
from app.services.model_versions import VersionRef

logger = logging.getLogger(__name__)


class DownloadFormat(enum.StrEnum):
    KERAS = "keras"  # the `.keras` file: keras.saving.load_model
    ONNX = "onnx"  # model.onnx: onnxruntime.InferenceSession
    SAVEDMODEL = "savedmodel"  # a .tar.gz in TF Serving's <name>/<version>/ layout


def add_onnx_export(ref: VersionRef) -> dict[str, Any] | None:
    """Export a stored version that has no ONNX file and add it to the version (its manifest
    and recorded checksum change; its other files do not). None if it had one already.
    The conversion runs before the name's lock is taken: only the swap holds it."""
    from app.ml.export import export_onnx

    folder = model_versions.served_folder(ref)
    if (folder / ONNX_FILE).is_file():
        return None
    metadata = json.loads((folder / META_FILE).read_text())
    model = load_keras_model(folder)
    with tempfile.TemporaryDirectory(prefix="export-", dir=get_settings().data_dir) as tmp:
        exported = export_onnx(
            model, Path(tmp) / ONNX_FILE, image_size=int(metadata["input"]["image_size"])
        )
        with session_scope() as session:
            lock_key(session, model_name_key(ref.name))
            row = session.get(ModelVersion, ref.id)
            if row is None:
                raise NotFoundError(f"{ref.name} v{ref.version} was deleted meanwhile")
            stored = model_versions.model_store().add_files(
                row.path, expected_sha256=row.sha256, sources={ONNX_FILE: exported.path},
                metadata={"exports": {"onnx": exported.describe()}},
            )  # fmt: skip
            row.sha256, row.size_bytes = stored.sha256, stored.size_bytes
    logger.info("exported %s v%s to ONNX", ref.name, ref.version)
    return exported.describe()


def stored_versions(*, name: str | None, version: int | None) -> list[VersionRef]:
    """Every stored version (of `name`, or that one `version`), oldest first; the caller
    skips those that turn out to have an export already."""
    with session_scope() as session:
        query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
        if name is not None:
            query = query.where(ModelVersion.name == name)
        if version is not None:
            query = query.where(ModelVersion.version == version)
        return [VersionRef.of(row) for row in session.scalars(query)]


def download_path(ref: VersionRef, fmt: DownloadFormat) -> tuple[Path, str]:
    """The file to send for `ref` in `fmt`, and the file name the client should save it as."""
    folder = model_versions.served_folder(ref)
    stem = f"{ref.name}-v{ref.version}"
    if fmt is DownloadFormat.KERAS:
        return folder / MODEL_FILE, f"{stem}.keras"
    if fmt is DownloadFormat.ONNX:
        if not (folder / ONNX_FILE).is_file():
            raise NotFoundError(
                f"{ref.name} v{ref.version} has no ONNX export; an operator can add one with "
                f"`python -m app.cli export-onnx --name {ref.name} --version {ref.version}`"
            )
        return folder / ONNX_FILE, f"{stem}.onnx"
    return _saved_model_archive(ref, folder), f"{stem}-savedmodel.tar.gz"


def _saved_model_archive(ref: VersionRef, folder: Path) -> Path:
    """A .tar.gz of the version as a SavedModel under `<name>/<version>/`, the layout TF
    Serving's --model_base_path expects. Built once per version checksum and kept."""
    from app.ml.export import export_saved_model

    cache = get_settings().data_dir / "exports"
    archive = cache / f"{ref.sha256}-savedmodel.tar.gz"
    if archive.is_file():
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="savedmodel-", dir=cache) as tmp:
        exported = Path(tmp) / str(ref.version)
        export_saved_model(load_keras_model(folder), exported)
        partial = cache / f".{archive.name}.{uuid.uuid4().hex}"
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(exported, arcname=f"{ref.name}/{ref.version}")
        partial.replace(archive)  # concurrent builds: the last whole archive wins
    return archive
