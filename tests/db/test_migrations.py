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
    "review_items",
    "model_exports",
    "dataset_analyses",
    "cv_projects",
    "cv_tags",
    "cv_images",
    "cv_image_tags",
    "cv_iterations",
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


def test_existing_datasets_become_first_versions_of_their_own(empty_database_url: str) -> None:
    """0006 on a database with data: each dataset is version 1 of its own lineage, and jobs
    on a dataset trained on its version 1."""
    import uuid

    from sqlalchemy import text

    config = alembic_config(empty_database_url)
    command.upgrade(config, "0005")
    dataset_id, job_id = uuid.uuid4(), uuid.uuid4()
    engine = create_engine(empty_database_url)
    stored_id = dataset_id.hex if empty_database_url.startswith("sqlite") else str(dataset_id)
    stored_job = job_id.hex if empty_database_url.startswith("sqlite") else str(job_id)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO datasets (id, name, status, class_names, split_counts, stats, "
                    "created_at) VALUES (:id, 'old', 'ready', '[]', '{}', '{}', CURRENT_TIMESTAMP)"
                ),
                {"id": stored_id},
            )
            connection.execute(
                text(
                    "INSERT INTO training_jobs (id, dataset_id, method, parameters, status, "
                    "progress, progress_detail, cancel_requested, created_at) VALUES (:id, "
                    ":dataset, 'scratch', '{}', 'succeeded', 1.0, '{}', false, CURRENT_TIMESTAMP)"
                ),
                {"id": stored_job, "dataset": stored_id},
            )
        command.upgrade(config, "head")
        with engine.connect() as connection:
            lineage, version, parent = connection.execute(
                text("SELECT lineage_id, version, parent_id FROM datasets")
            ).one()
            job_version = connection.execute(
                text("SELECT dataset_version FROM training_jobs")
            ).scalar_one()
    finally:
        engine.dispose()
    assert uuid.UUID(str(lineage)) == dataset_id
    assert (version, parent, job_version) == (1, None, 1)
    assert _schema_diff(empty_database_url) == []
