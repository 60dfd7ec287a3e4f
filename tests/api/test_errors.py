"""Every failure is JSON of the shape {"error": code, "detail": ...}."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from app.db.models import TrainingJob
from app.db.session import session_scope
from tests.conftest import api_client, migrate


def test_unknown_job_is_404_json(client: TestClient) -> None:
    missing = uuid.uuid4()
    response = client.get(f"/jobs/{missing}")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": f"job {missing} not found"}


def test_malformed_id_is_422_naming_the_field(client: TestClient) -> None:
    response = client.get("/jobs/not-a-uuid")
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error"
    assert body["detail"][0]["loc"] == ["path", "job_id"]


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    assert client.get("/nothing-here").json()["error"] == "not_found"
    response = client.delete("/health")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_broker_down_gives_503_and_leaves_no_job_row(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url, broker_url="redis://127.0.0.1:1/0")
    migrate(sqlite_url)
    with api_client() as client:
        response = client.post("/workers/check")
    assert response.status_code == 503
    assert response.json()["error"] == "service_unavailable"
    assert "broker" in response.json()["detail"]
    with session_scope() as session:
        assert session.query(TrainingJob).count() == 0


def test_broker_down_at_a_first_export_is_503_and_the_export_is_sent_later(
    configure, sqlite_url: str, monkeypatch
) -> None:
    """The export's row is committed before its task is sent: a broker that refuses is a 503,
    and the next download after REQUEUE_AFTER_SECONDS sends the task again."""
    from app.db.models import ModelExport
    from app.services import exports
    from tests.models import register_tiny_model

    configure(database_url=sqlite_url, broker_url="redis://127.0.0.1:1/0")
    migrate(sqlite_url)
    register_tiny_model("pets")
    url, savedmodel = "/models/pets/versions/1/download", {"format": "savedmodel"}
    with api_client() as client:
        refused = client.get(url, params=savedmodel)
        assert refused.status_code == 503, refused.text
        assert "broker" in refused.json()["detail"]
        with session_scope() as session:
            assert [e.status for e in session.query(ModelExport)] == ["queued"]
        sent: list[str] = []
        monkeypatch.setattr(
            exports.tracking, "send_task", lambda name, *, args, queue: sent.extend(args)
        )
        assert client.get(url, params=savedmodel).status_code == 202
        assert sent == []  # asked again at once: the task is not sent twice
        monkeypatch.setattr(exports.tracking, "REQUEUE_AFTER_SECONDS", 0.0)
        assert client.get(url, params=savedmodel).status_code == 202
        assert len(sent) == 1
