"""Two API processes on one PostgreSQL database and one Redis, as two replicas behind a proxy:
a key's prediction rate and an owner's job limit hold for both together."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.core.config import ENV_PREFIX
from tests.conftest import api_key, migrate, reset_caches
from tests.models import register_tiny_model
from tests.processes import free_port, running_api, wait_until
from tests.zips import class_folders, image_bytes, make_zip

BURST = 5
# One token back every 20 s: none comes back while a test runs, so the counts are exact.
RATE = 0.05
JOB_LIMIT = 2
PHOTO = image_bytes("PNG")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request) -> Iterator[Path]:
    """One database (with a model of owner "shop") and one Redis, configured in os.environ for
    the API processes the tests start; yields a folder for their logs."""
    postgres_url = request.getfixturevalue("module_postgres_url")
    redis_url = request.getfixturevalue("module_redis_url")
    tmp = tmp_path_factory.mktemp("replicas")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {
            "DATA_DIR": str(tmp / "data"),
            "ENVIRONMENT": "test",
            "DATABASE_URL": postgres_url,
            "BROKER_URL": redis_url,
            "REDIS_URL": redis_url,
            "PREDICT_BURST": str(BURST),
            "PREDICT_RATE_PER_SECOND": str(RATE),
            "MAX_ACTIVE_JOBS_PER_OWNER": str(JOB_LIMIT),
        }.items():
            patch.setenv(ENV_PREFIX + key, value)
        reset_caches()
        migrate(postgres_url)
        register_tiny_model("pets", owner="shop")
        yield tmp
    reset_caches()


@contextmanager
def two_replicas(logs: Path, *, shared_limits: bool) -> Iterator[tuple[str, str]]:
    """Two API processes on the stack's database, once both have loaded the model; with
    `shared_limits`, on its Redis too. Yields their URLs."""
    with pytest.MonkeyPatch.context() as patch, ExitStack() as stack:
        if not shared_limits:
            patch.delenv(ENV_PREFIX + "REDIS_URL")
        started = {}
        for name in ("a", "b"):
            log = logs / f"api-{name}.log"
            started[log] = stack.enter_context(running_api(log, port=free_port()))
        for log, base in started.items():
            wait_until(
                lambda base=base: httpx.get(f"{base}/v2/health/ready").status_code == 200,
                timeout=60,
                what=f"{base} to load the model",
                log=log,
            )
        first, second = started.values()
        yield first, second


def _alternating_predictions(bases: tuple[str, str], count: int) -> list[httpx.Response]:
    """`count` predictions with one new key of "shop", sent to each replica in turn."""
    headers = {"Authorization": f"Bearer {api_key('predict', owner='shop')}"}
    photo = {"file": ("x.png", PHOTO)}
    return [
        httpx.post(f"{bases[i % 2]}/predict", files=photo, headers=headers, timeout=30)
        for i in range(count)
    ]


def test_replicas_without_redis_admit_a_burst_each(stack: Path) -> None:
    """What a deployment without SMALLVISION_REDIS_URL gets: every replica its own bucket."""
    with two_replicas(stack, shared_limits=False) as bases:
        answers = _alternating_predictions(bases, 2 * BURST + 2)
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200] * 2 * BURST + [429] * 2


@pytest.fixture(scope="module")
def shared(stack: Path) -> Iterator[tuple[str, str]]:
    """Two replicas sharing the prediction limits through Redis."""
    with two_replicas(stack, shared_limits=True) as bases:
        yield bases


def test_replicas_on_one_redis_admit_one_burst_per_key_between_them(
    shared: tuple[str, str],
) -> None:
    answers = _alternating_predictions(shared, 2 * BURST + 2)
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200] * BURST + [429] * (BURST + 2), [a.text for a in answers]
    for refused in answers[BURST : BURST + 2]:  # one from each replica
        assert refused.json()["error"] == "too_many_requests"
        assert 1 <= int(refused.headers["retry-after"]) <= 1 / RATE


def test_the_job_limit_holds_for_concurrent_requests_to_both_replicas(
    shared: tuple[str, str],
) -> None:
    from app.db.models import TrainingJob
    from app.db.session import session_scope

    headers = {"Authorization": f"Bearer {api_key('train', owner='lab')}"}
    dataset = make_zip(class_folders({"cats": 3, "dogs": 3}))
    uploaded = httpx.post(
        f"{shared[0]}/datasets",
        files={"file": ("d.zip", dataset)},
        data={"name": "d"},
        headers=headers,
        timeout=60,
    )
    assert uploaded.status_code == 201, uploaded.text
    requests = 8
    start = threading.Barrier(requests)

    def submit(index: int) -> int:
        start.wait()
        return httpx.post(
            f"{shared[index % 2]}/jobs",
            json={"dataset_id": uploaded.json()["id"]},
            headers=headers,
            timeout=60,
        ).status_code

    with ThreadPoolExecutor(requests) as pool:
        statuses = list(pool.map(submit, range(requests)))
    assert sorted(statuses) == [202] * JOB_LIMIT + [429] * (requests - JOB_LIMIT)
    with session_scope() as session:
        jobs = session.scalar(
            select(func.count()).select_from(TrainingJob).where(TrainingJob.owner == "lab")
        )
    assert jobs == JOB_LIMIT
