"""Shared fixtures: isolated settings per test, real PostgreSQL/Redis, migrated databases."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from alembic import command
from app.core.config import ENV_PREFIX, PROJECT_ROOT, get_settings
from app.core.queue import _producer
from app.db.session import dispose_engines
from app.services.auth import recently_verified
from app.services.review import THRESHOLDS

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
# Versions trained in tests get no formats for devices after training (four conversions and
# checks per version would double a training test's time); tests/e2e/test_edge_exports.py
# turns them on.
os.environ.setdefault(ENV_PREFIX + "EDGE_EXPORT_FORMATS", "")


def service_unavailable(what: str, reason: str) -> None:
    """Fail when CI requires the services (REQUIRE_SERVICES=1), skip with the reason otherwise."""
    message = f"{what} is not reachable ({reason})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; REQUIRE_SERVICES=1 demands it", pytrace=False)
    pytest.skip(f"{message}; set REQUIRE_SERVICES=1 to make this a failure")


def _tcp_answers(url: str, default_port: int) -> str | None:
    parts = urlsplit(url.replace("+psycopg", ""))
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return None
    except OSError as exc:
        return str(exc)


def reset_caches() -> None:
    """Forget cached Settings, engines, producers and what was read from the database (keys,
    review thresholds) so a test's environment takes effect."""
    get_settings.cache_clear()
    _producer.cache_clear()
    recently_verified.clear()
    THRESHOLDS.forget()
    dispose_engines()


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """configure(database_url=..., broker_url=...) points the app (and any child process that
    inherits os.environ) at these URLs and a fresh data directory under tmp_path."""

    def apply(*, database_url: str | None = None, broker_url: str | None = None, **extra: str):
        data_dir = tmp_path / "data"
        env = {"DATA_DIR": str(data_dir), "ENVIRONMENT": "test", **extra}
        if database_url:
            env["DATABASE_URL"] = database_url
        if broker_url:
            env["BROKER_URL"] = broker_url
        for key, value in env.items():
            monkeypatch.setenv(ENV_PREFIX + key, value)
        reset_caches()
        settings = get_settings()
        settings.ensure_directories()
        return settings

    yield apply
    reset_caches()


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


def _fresh_postgres_database() -> Iterator[str]:
    reason = _tcp_answers(POSTGRES_URL, 5432)
    if reason:
        service_unavailable(f"PostgreSQL at {POSTGRES_URL}", reason)
    # pre-ping: a fault test restarts PostgreSQL, which kills pooled connections
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"smallvision_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    yield from _fresh_postgres_database()


@pytest.fixture(scope="module")
def module_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database shared by one test module."""
    yield from _fresh_postgres_database()


def _emptied_redis() -> str:
    reason = _tcp_answers(REDIS_URL, 6379)
    if reason:
        service_unavailable(f"Redis at {REDIS_URL}", reason)
    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


@pytest.fixture
def redis_url() -> str:
    """The test Redis database, emptied first."""
    return _emptied_redis()


@pytest.fixture(scope="module")
def module_redis_url() -> str:
    return _emptied_redis()


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "smallvision-test",
    "AWS_SECRET_ACCESS_KEY": "smallvision-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 HTTP API on loopback: moto's standalone server, started for the session."""
    import subprocess
    import sys

    from tests.processes import free_port, stop_process_group, wait_until

    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: _tcp_answers(f"http://127.0.0.1:{port}", port) is None,
            timeout=30,
            what="the S3 server (moto)",
            log=log,
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(server)


@pytest.fixture
def s3_settings(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings (without the prefix) for a new empty bucket on the S3 server, with its
    credentials in the environment (child processes inherit them)."""
    import boto3

    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    bucket = f"smallvision-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return {
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_REGION": "us-east-1",
        "S3_PREFIX": "tenant-a",
    }


def bucket_keys(settings: dict[str, str]) -> list[str]:
    """Every key in the bucket of `s3_settings`."""
    import boto3

    client = boto3.client("s3", endpoint_url=settings["S3_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings["S3_BUCKET"])
    return sorted(entry["Key"] for page in pages for entry in page.get("Contents", []))


def api_key(*scopes: str, owner: str = "tester") -> str:
    """A new API key of `owner` with these scopes (default admin), in the configured database."""
    from app.db.session import session_scope
    from app.services import auth

    with session_scope() as session:
        scopes = scopes or ("admin",)
        return auth.create_key(session, name="test", owner=owner, scopes=list(scopes)).key


def auth_headers(*scopes: str, owner: str = "tester") -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key(*scopes, owner=owner)}"}


@contextmanager
def api_client(*scopes: str) -> Iterator[TestClient]:
    """The app in a TestClient that sends a fresh key with these scopes (default admin)."""
    from app.main import create_app

    with TestClient(create_app(), headers=auth_headers(*scopes)) as client:
        yield client


@contextmanager
def worker_stack(
    tmp: Path, *, postgres_url: str, redis_url: str, **settings: str
) -> Iterator[tuple[TestClient, Path]]:
    """The API in a TestClient and one real Celery worker, on PostgreSQL and Redis, with the
    offline weights and downloads off (as on an offline deployment), plus `settings`; yields
    the client and the worker's log file."""
    from tests.processes import running_worker
    from tests.zips import SHARED

    with pytest.MonkeyPatch.context() as patch:
        for key, value in {
            "DATA_DIR": str(tmp / "data"),
            "ENVIRONMENT": "test",
            "DATABASE_URL": postgres_url,
            "BROKER_URL": redis_url,
            "PRETRAINED_WEIGHTS_DIR": str(SHARED / "weights"),
            "ALLOW_WEIGHTS_DOWNLOAD": "false",
            **settings,
        }.items():
            patch.setenv(ENV_PREFIX + key, value)
        reset_caches()
        migrate(postgres_url)
        log = tmp / "worker.log"
        with running_worker(log), api_client() as client:
            yield client, log
    reset_caches()
