"""Building the formats for devices of a stored version, in this process (as a worker does,
and as `python -m app.cli export-edge` does): checked on the test split of the dataset the
version was trained on, and failed with the reason when that dataset cannot be read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import PROJECT_ROOT
from app.db.session import session_scope
from app.services import exports
from app.services.exports import DownloadFormat
from app.services.model_versions import VersionRef
from tests.conftest import auth_headers, migrate
from tests.models import register_tiny_model
from tests.zips import tiny_photo_zip


@pytest.fixture
def dataset_id(configure, sqlite_url: str, tmp_path: Path) -> str:
    configure(database_url=sqlite_url)
    migrate(sqlite_url)
    from app.main import create_app

    archive = tiny_photo_zip(tmp_path / "pets.zip")
    with (
        TestClient(create_app(), headers=auth_headers("admin")) as client,
        archive.open("rb") as handle,
    ):
        created = client.post("/datasets", files={"file": handle}, data={"name": "pets"})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _ref(row) -> VersionRef:
    with session_scope() as session:
        return VersionRef.of(session.merge(row))


def test_a_version_is_built_and_checked_on_its_datasets_test_split(dataset_id: str) -> None:
    ref = _ref(register_tiny_model("edge", dataset_id=dataset_id, owner="tester"))
    for fmt in (DownloadFormat.TFLITE, DownloadFormat.ONNX_INT8):
        built, now = exports.build_now(ref, fmt, worker_id="test")
        assert now and built.status == "ready", built.error
        check = built.report
        assert check is not None
        assert check["evaluated_on"] == "test" and check["images"] == 8  # 4 per class
        assert check["float_accuracy"] in {i / 8 for i in range(9)}
        assert built.size_bytes == check["size_bytes"] and built.key is not None
        assert built.key.endswith(exports.download_name(ref, fmt))
    assert exports.build_now(ref, DownloadFormat.TFLITE, worker_id="test")[1] is False


def test_a_version_whose_dataset_is_gone_fails_with_the_reason(dataset_id: str) -> None:
    gone = "00000000-0000-4000-8000-000000000000"
    ref = _ref(register_tiny_model("orphan", dataset_id=gone, owner="tester"))
    built, now = exports.build_now(ref, DownloadFormat.TFLITE, worker_id="test")
    assert now and built.status == "failed" and built.report is None
    assert gone in (built.error or "") and "cannot be read" in (built.error or "")


def test_the_operators_command_builds_what_is_missing(dataset_id: str) -> None:
    register_tiny_model("edge-cli", dataset_id=dataset_id, owner="tester")
    ran = subprocess.run(
        [
            *(sys.executable, "-m", "app.cli", "export-edge", "--name", "edge-cli"),
            *("--formats", "tflite_fp16,tflite_int8"),
        ],
        cwd=PROJECT_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, fmt in zip(lines, ("tflite_fp16", "tflite_int8"), strict=True):
        assert line.startswith(f"edge-cli v1 {fmt}: built: ") and "on 8 test images" in line
