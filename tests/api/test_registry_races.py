"""Model names, version numbers and concurrent writes on PostgreSQL (found by an outside review).

Each race is forced, not hoped for: the read that the racing requests both depend on is
slowed down, so without a lock both read before either writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.errors import ConflictError
from app.db.models import ModelName, ModelVersion
from app.db.session import session_scope
from app.services import jobs, model_versions
from tests.conftest import api_client, auth_headers, migrate
from tests.models import register_tiny_model
from tests.zips import tiny_photo_zip


@pytest.fixture
def client(configure, postgres_url: str, redis_url: str) -> Iterator[TestClient]:
    configure(database_url=postgres_url, broker_url=redis_url, MODEL_REFRESH_SECONDS="3600")
    migrate(postgres_url)
    with api_client() as test_client:
        yield test_client


def _slowed(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, seconds: float = 0.4):
    """Make module.name wait after it returns: concurrent callers all get there first."""
    original: Callable[..., Any] = getattr(module, name)

    def slow(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        time.sleep(seconds)
        return result

    monkeypatch.setattr(module, name, slow)


def _at_once(*calls: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _active_versions(name: str) -> list[int]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(ModelVersion.version).where(
                    ModelVersion.name == name, ModelVersion.is_active.is_(True)
                )
            )
        )


def _dataset(client: TestClient, tmp_path, headers: dict[str, str]) -> str:
    archive = tiny_photo_zip(tmp_path / "tiny.zip").read_bytes()
    response = client.post(
        "/datasets", files={"file": ("t.zip", archive)}, data={"name": "t"}, headers=headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_second_owner_cannot_take_a_name_before_its_first_version(client, tmp_path) -> None:
    alice, bob = auth_headers("train", owner="alice"), auth_headers("train", owner="bob")
    request = {"method": "scratch", "model_name": "shared", "epochs": 1}
    first = client.post(
        "/jobs", json={**request, "dataset_id": _dataset(client, tmp_path, alice)}, headers=alice
    )
    assert first.status_code == 202, first.text
    second = client.post(
        "/jobs", json={**request, "dataset_id": _dataset(client, tmp_path, bob)}, headers=bob
    )
    assert second.status_code == 409, second.text
    assert "is not available" in second.json()["detail"]
    # and where the version is registered, ownership is checked again, under the name's lock
    with pytest.raises(ConflictError):
        register_tiny_model("shared", owner="bob")
    assert register_tiny_model("shared", owner="alice").version == 1


def _legacy_shared_name() -> None:
    """A name two owners share, as before names had owners: alice's v1 active, bob's v2."""
    register_tiny_model("legacy", owner="alice")
    with session_scope() as session:
        alice_v1 = session.scalar(select(ModelVersion).where(ModelVersion.name == "legacy"))
        assert alice_v1 is not None
        session.add(
            ModelVersion(
                owner="bob",
                name="legacy",
                version=2,
                job_id=None,
                path=alice_v1.path,
                sha256=alice_v1.sha256,
                size_bytes=alice_v1.size_bytes,
                metrics_summary={},
                is_active=False,
            )
        )
        name = session.get(ModelName, "legacy")
        assert name is not None
        name.last_version = 2


def test_activate_never_switches_off_another_owners_version(client) -> None:
    _legacy_shared_name()
    bob = auth_headers("train", owner="bob")
    response = client.post("/models/legacy/versions/2/activate", headers=bob)
    assert response.status_code == 409, response.text
    assert _active_versions("legacy") == [1]


def test_models_list_shows_only_the_callers_active_version(client) -> None:
    _legacy_shared_name()
    (bobs,) = client.get("/models", headers=auth_headers("train", owner="bob")).json()
    assert (bobs["name"], bobs["versions"], bobs["active_version"]) == ("legacy", 1, None)
    (alices,) = client.get("/models", headers=auth_headers("train", owner="alice")).json()
    assert alices["active_version"] == 1


def test_activate_and_delete_of_one_version_at_once_leave_one_active(
    client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(2):
        register_tiny_model("pets")
    _slowed(monkeypatch, model_versions, "get_version")
    activate, delete = _at_once(
        lambda: client.post("/models/pets/versions/2/activate"),
        lambda: client.delete("/models/pets/versions/2"),
    )
    outcomes = {activate.status_code, delete.status_code}
    assert outcomes in ({200, 409}, {404, 204}), (activate.text, delete.text)
    assert len(_active_versions("pets")) == 1


def test_two_activations_at_once_never_500(client, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(3):
        register_tiny_model("pets")
    _slowed(monkeypatch, model_versions, "get_version")
    responses = _at_once(
        lambda: client.post("/models/pets/versions/2/activate"),
        lambda: client.post("/models/pets/versions/3/activate"),
    )
    assert sorted(r.status_code for r in responses) in ([200, 200], [200, 409]), [
        r.text for r in responses
    ]
    assert len(_active_versions("pets")) == 1


def test_concurrent_job_requests_respect_the_per_owner_limit(
    configure, postgres_url: str, redis_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(database_url=postgres_url, broker_url=redis_url, MAX_ACTIVE_JOBS_PER_OWNER="4")
    migrate(postgres_url)
    with api_client() as client:
        shop = auth_headers("train", owner="shop")
        dataset_id = _dataset(client, tmp_path, shop)
        _slowed(monkeypatch, jobs, "_check_active_jobs", seconds=0.3)
        request = {"dataset_id": dataset_id, "method": "scratch", "epochs": 1}
        responses = _at_once(
            *[lambda: client.post("/jobs", json=request, headers=shop) for _ in range(8)]
        )
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * 4 + [429] * 4, [r.text for r in responses]


def test_version_numbers_skip_stray_folders_and_are_never_reused(client) -> None:
    from app.core.config import get_settings

    stray = get_settings().models_dir / "pets" / "v1"  # left by a crash before registering
    stray.mkdir(parents=True)
    assert register_tiny_model("pets").version == 2
    assert register_tiny_model("pets").version == 3
    assert client.delete("/models/pets/versions/3").status_code == 204
    assert register_tiny_model("pets").version == 4  # 3 was handed out once: never again
    assert client.get("/models/pets/versions/3").status_code == 404


def test_two_jobs_finishing_together_get_two_versions(client) -> None:
    versions = _at_once(lambda: register_tiny_model("pets"), lambda: register_tiny_model("pets"))
    assert sorted(v.version for v in versions) == [1, 2]
    assert _active_versions("pets") == [1] or _active_versions("pets") == [2]
