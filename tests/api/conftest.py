from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import api_client, migrate


@pytest.fixture
def client(configure, sqlite_url: str) -> Iterator[TestClient]:
    """The API on a migrated SQLite database and the embedded broker, all under tmp_path."""
    configure(database_url=sqlite_url)
    migrate(sqlite_url)
    with api_client() as test_client:
        yield test_client


@pytest.fixture
def serving_client(configure, sqlite_url: str) -> Iterator[TestClient]:
    """The API with its model cache and no background refresh in the test's time: models
    registered by the test are loaded when first asked for."""
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600")
    migrate(sqlite_url)
    with api_client() as test_client:
        yield test_client
