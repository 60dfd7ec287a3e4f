"""A version's own files (`.keras`, ONNX), and the ONNX export added to versions saved
without one (`python -m app.cli export-onnx`)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.core.config import get_settings
from app.core.errors import NotFoundError
from app.db.locks import lock_key, model_name_key
from app.db.models import ModelVersion
from app.db.session import session_scope
from app.ml.export import ONNX_FILE
from app.ml.serving import META_FILE, MODEL_FILE, load_frozen_top, load_keras_model
from app.services import model_versions
from app.services.exports.formats import DownloadFormat
from app.services.model_versions import VersionRef

logger = logging.getLogger(__name__)


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
            model,
            Path(tmp) / ONNX_FILE,
            image_size=int(metadata["input"]["image_size"]),
            frozen_top=load_frozen_top(folder),
        )
        with session_scope() as session:
            lock_key(session, model_name_key(ref.name))
            row = session.get(ModelVersion, ref.id)
            if row is None:
                raise NotFoundError(f"{ref.name} v{ref.version} was deleted meanwhile")
            stored = model_versions.model_store().add_files(
                row.path,
                expected_sha256=row.sha256,
                sources={ONNX_FILE: exported.path},
                metadata={"exports": {"onnx": exported.describe()}},
            )
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


def version_file(ref: VersionRef, fmt: DownloadFormat) -> Path:
    """The version's own file in `fmt` (keras or onnx), from its verified folder."""
    folder = model_versions.served_folder(ref)
    if fmt is DownloadFormat.KERAS:
        return folder / MODEL_FILE
    if not (folder / ONNX_FILE).is_file():
        raise NotFoundError(
            f"{ref.name} v{ref.version} has no ONNX export; an operator can add one with "
            f"`python -m app.cli export-onnx --name {ref.name} --version {ref.version}`"
        )
    return folder / ONNX_FILE
