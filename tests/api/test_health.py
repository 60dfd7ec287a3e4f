from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import migrate

DEAD_PORT_REDIS = "redis://127.0.0.1:1/0"
DEAD_PORT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"


def test_health_answers_without_dependencies(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_when_database_and_broker_answer(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "storage": "ok"},
    }


def test_ready_on_postgres_and_redis(configure, postgres_url: str, redis_url: str) -> None:
    configure(database_url=postgres_url, broker_url=redis_url)
    migrate(postgres_url)
    with TestClient(create_app()) as client:
        response = client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_not_ready_names_the_unreachable_broker(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url, broker_url=DEAD_PORT_REDIS, READINESS_TIMEOUT_SECONDS="2")
    migrate(sqlite_url)
    with TestClient(create_app()) as client:
        response = client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "not_ready"
    assert body["detail"]["database"] == "ok"
    assert body["detail"]["broker"] != "ok"
    assert "Connection" in body["detail"]["broker"] or "refused" in body["detail"]["broker"]


def test_not_ready_names_the_unreachable_database(configure) -> None:
    configure(database_url=DEAD_PORT_POSTGRES, READINESS_TIMEOUT_SECONDS="2")
    with TestClient(create_app()) as client:
        response = client.get("/ready")
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail["broker"] == "ok"
    assert "OperationalError" in detail["database"]


def test_readiness_checks_the_bucket(configure, sqlite_url: str, s3_settings) -> None:
    configure(database_url=sqlite_url, **s3_settings)
    migrate(sqlite_url)
    with TestClient(create_app()) as client:
        assert client.get("/ready").json()["checks"]["storage"] == "ok"
    configure(database_url=sqlite_url, **{**s3_settings, "S3_BUCKET": "no-such-bucket"})
    with TestClient(create_app()) as client:
        response = client.get("/ready")
    assert response.status_code == 503
    assert "404" in response.json()["detail"]["storage"]


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/ready", "/jobs/{job_id}", "/workers/check"} <= set(paths)
