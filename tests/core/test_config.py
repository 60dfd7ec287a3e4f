from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import Settings


def test_every_local_root_and_url_derives_from_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'smallvision.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    assert settings.uses_embedded_broker
    assert settings.datasets_dir == tmp_path / "datasets"
    assert settings.models_dir == tmp_path / "models"
    assert settings.feature_cache_dir == tmp_path / "feature_cache"


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMALLVISION_DATABASE_URL", "postgresql+psycopg://u@db:5432/sv")
    monkeypatch.setenv("SMALLVISION_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("SMALLVISION_PRETRAINED_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("SMALLVISION_MAX_UPLOAD_BYTES", "1000")
    settings = Settings()
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert not settings.uses_embedded_broker
    assert settings.pretrained_weights_dir == tmp_path
    assert settings.max_upload_bytes == 1000


def test_production_refuses_the_single_machine_broker(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="BROKER_URL"):
        Settings(environment="production", data_dir=tmp_path)
    Settings(environment="production", data_dir=tmp_path, broker_url="redis://redis:6379/0")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        Settings(max_upload_bytes=0)
