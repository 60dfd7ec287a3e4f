"""Per-owner limits: images per dataset, jobs at once, and each key's prediction rate."""

from __future__ import annotations

import io
import zipfile

import pytest
from fastapi.testclient import TestClient

from app.core.errors import TooManyRequestsError
from app.main import create_app
from app.services.rate_limit import RateLimiter
from tests.conftest import api_key, migrate
from tests.models import register_tiny_model
from tests.zips import image_bytes


def test_token_bucket_allows_bursts_then_refills() -> None:
    import uuid

    limiter, key, other = RateLimiter(rate_per_second=2, burst=3), uuid.uuid4(), uuid.uuid4()
    for _ in range(3):
        limiter.take(key, now=100.0)
    with pytest.raises(TooManyRequestsError) as refused:
        limiter.take(key, now=100.0)
    assert refused.value.headers == {"Retry-After": "1"}
    limiter.take(other, now=100.0)  # another key has its own bucket
    limiter.take(key, now=100.5)  # half a second at 2/s: one token back
    with pytest.raises(TooManyRequestsError):
        limiter.take(key, now=100.5)


def _client(configure, sqlite_url: str, **limits: str) -> TestClient:
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600", **limits)
    migrate(sqlite_url)
    return TestClient(create_app())


def _zip(count_per_class: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, offset in (("cats", 0), ("dogs", 1000)):
            for index in range(count_per_class):
                archive.writestr(f"{label}/{index}.png", image_bytes("PNG", seed=offset + index))
    return buffer.getvalue()


def test_prediction_rate_per_key_is_429_with_retry_after(configure, sqlite_url: str) -> None:
    with _client(
        configure, sqlite_url, PREDICT_RATE_PER_SECOND="0.01", PREDICT_BURST="2"
    ) as client:
        register_tiny_model("pets", owner="shop")
        first, second = (
            {"Authorization": f"Bearer {api_key('predict', owner='shop')}"} for _ in range(2)
        )
        photo = {"file": ("x.png", image_bytes("PNG"))}
        for _ in range(2):
            assert client.post("/predict", files=photo, headers=first).status_code == 200
        refused = client.post("/predict", files=photo, headers=first)
        assert refused.status_code == 429
        assert refused.json()["error"] == "too_many_requests"
        assert int(refused.headers["retry-after"]) >= 1
        tf_serving = client.post("/v1/models/pets:predict", json={"instances": []}, headers=first)
        assert tf_serving.status_code == 429  # every prediction protocol shares the bucket
        assert client.post("/predict", files=photo, headers=second).status_code == 200


def test_dataset_image_limit_is_413(configure, sqlite_url: str) -> None:
    with _client(configure, sqlite_url, MAX_DATASET_IMAGES="5") as client:
        headers = {"Authorization": f"Bearer {api_key('train')}"}
        response = client.post(
            "/datasets", files={"file": ("d.zip", _zip(3))}, data={"name": "d"}, headers=headers
        )
        assert response.status_code == 413
        assert "at most 5" in response.json()["detail"]


def test_active_jobs_per_owner_is_429(configure, sqlite_url: str) -> None:
    from app.db.session import session_scope
    from app.ml.config import Method
    from app.services import jobs

    with _client(configure, sqlite_url, MAX_ACTIVE_JOBS_PER_OWNER="1") as client:
        headers = {"Authorization": f"Bearer {api_key('train', owner='lab')}"}
        uploaded = client.post(
            "/datasets", files={"file": ("d.zip", _zip(3))}, data={"name": "d"}, headers=headers
        )
        assert uploaded.status_code == 201, uploaded.text
        with session_scope() as session:  # one queued job of the same owner
            jobs.create_job(
                session, method=Method.SCRATCH, dataset_id=None, parameters={}, owner="lab"
            )
        refused = client.post("/jobs", json={"dataset_id": uploaded.json()["id"]}, headers=headers)
        assert refused.status_code == 429
        assert "limit 1" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "60"
