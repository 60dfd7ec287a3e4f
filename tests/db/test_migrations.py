"""The Alembic migrations build exactly the schema the SQLAlchemy models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from alembic import command
from app.db.base import Base
from tests.conftest import alembic_config

EXPECTED_TABLES = {
    "api_keys",
    "datasets",
    "training_jobs",
    "epoch_metrics",
    "model_versions",
    "model_names",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


def _schema_diff(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_matches_models_and_downgrade_empties(empty_database_url: str) -> None:
    config = alembic_config(empty_database_url)

    command.upgrade(config, "head")
    assert _tables(empty_database_url) == EXPECTED_TABLES | {"alembic_version"}
    assert _schema_diff(empty_database_url) == []

    command.downgrade(config, "base")
    assert _tables(empty_database_url) == {"alembic_version"}

    command.upgrade(config, "head")  # and the round trip works again
    assert _schema_diff(empty_database_url) == []


def test_diff_detects_a_model_the_migrations_lack(sqlite_url: str) -> None:
    """The comparison itself can fail: an empty database differs from the models."""
    assert _schema_diff(sqlite_url) != []
