"""Request ids, JSON logs and the Prometheus metrics endpoint."""

from __future__ import annotations

import json
import logging

import pytest

from app.core.logging import JSONFormatter, request_id_var
from tests.models import register_tiny_model
from tests.zips import image_bytes


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample in the exposition text."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_every_response_carries_a_request_id(client) -> None:
    made = client.get("/health")
    assert len(made.headers["x-request-id"]) == 32
    kept = client.get("/health", headers={"X-Request-ID": "trace-42"})
    assert kept.headers["x-request-id"] == "trace-42"
    unsafe = client.get("/health", headers={"X-Request-ID": "bad id\nwith newline"})
    assert unsafe.headers["x-request-id"] != "bad id\nwith newline"


def test_request_log_lines_are_json_with_the_request_id(client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="smallvision.request")
    client.get("/jobs/00000000-0000-0000-0000-000000000000", headers={"X-Request-ID": "abc"})
    (record,) = [r for r in caplog.records if r.name == "smallvision.request"]
    token = request_id_var.set("abc")
    try:
        entry = json.loads(JSONFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert entry["request_id"] == "abc"
    assert entry["status"] == 404
    assert entry["route"] == "/jobs/{job_id}"
    assert entry["level"] == "INFO" and entry["duration_ms"] >= 0


def test_json_formatter_keeps_extras_and_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("job",), None)
        import sys

        record.exc_info = sys.exc_info()
    record.job_id = "j1"
    entry = json.loads(JSONFormatter().format(record))
    assert entry["message"] == "failed job"
    assert entry["job_id"] == "j1"
    assert "ValueError: boom" in entry["exception"]


def test_metrics_count_requests_by_route_jobs_and_predictions(client) -> None:
    register_tiny_model("pets")
    for _ in range(3):
        client.get("/jobs/00000000-0000-0000-0000-000000000000")
    assert client.post("/predict", files={"file": ("x.jpg", image_bytes())}).status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    counted = _sample(text, "smallvision_http_requests_total", route="/jobs/{job_id}", status="404")
    assert counted == 3
    assert _sample(text, "smallvision_http_request_duration_seconds_count", route="/predict") == 1
    assert _sample(text, "smallvision_predict_seconds_count", model="pets") == 1
    assert _sample(text, "smallvision_predict_images_total", model="pets") == 1
    assert _sample(text, "smallvision_forward_batch_images_count") >= 1
    assert _sample(text, "smallvision_jobs", status="queued") == 0
    assert _sample(text, "smallvision_queue_depth", queue="training") == 0


@pytest.fixture
def client(configure, sqlite_url: str):
    """The API on SQLite; metrics are process-wide, so each test reads them fresh."""
    from app.core import metrics
    from tests.conftest import api_client, migrate

    for collector in (
        metrics.HTTP_REQUESTS,
        metrics.HTTP_LATENCY,
        metrics.PREDICT_LATENCY,
        metrics.PREDICT_IMAGES,
    ):
        collector.clear()
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600")
    migrate(sqlite_url)
    with api_client() as test_client:
        yield test_client
