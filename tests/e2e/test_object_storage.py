"""Several machines that share nothing but PostgreSQL, Redis and an S3 bucket (moto's real S3
HTTP server): two API processes and two Celery workers, each with a data folder of its own.
Upload through one API, train on both workers, predict, explain and review through the other
API, delete, and the bucket holds exactly what the database says."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.core.config import ENV_PREFIX
from app.db.models import Dataset, ModelVersion, ReviewItem
from tests.conftest import api_key, bucket_keys, migrate, reset_caches
from tests.processes import free_port, running_api, running_worker, wait_job_finished
from tests.zips import PHOTOS, SHARED, tiny_photo_zip

TINY = {"image_size": 32, "batch_size": 8, "base_model": "mobilenet", "seed": 3, "epochs": 2}


@pytest.fixture
def cluster(
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
    s3_settings: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, object]]:
    """Two APIs and two workers on one database, broker and bucket; each process has its own
    data folder (nothing on disk is shared, but the read-only ImageNet weights)."""
    shared = {
        "ENVIRONMENT": "test",
        "DATABASE_URL": postgres_url,
        "BROKER_URL": redis_url,
        "PRETRAINED_WEIGHTS_DIR": str(SHARED / "weights"),
        "ALLOW_WEIGHTS_DOWNLOAD": "false",
        "MODEL_REFRESH_SECONDS": "0.5",
        **s3_settings,
    }
    for key, value in shared.items():
        monkeypatch.setenv(ENV_PREFIX + key, value)
    monkeypatch.setenv(ENV_PREFIX + "DATA_DIR", str(tmp_path / "test-process"))
    reset_caches()
    migrate(postgres_url)
    key = api_key()

    def env(name: str) -> dict[str, str]:
        return {**os.environ, ENV_PREFIX + "DATA_DIR": str(tmp_path / name)}

    with ExitStack() as stack:
        workers = [
            stack.enter_context(
                running_worker(tmp_path / f"{name}.log", env=env(name), node_name=f"{name}@%h")
            )
            for name in ("worker-a", "worker-b")
        ]
        apis = [
            stack.enter_context(
                running_api(tmp_path / f"{name}.log", port=free_port(), env=env(name))
            )
            for name in ("api-a", "api-b")
        ]
        clients = [
            stack.enter_context(
                httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
            )
            for url in apis
        ]
        yield {
            "clients": clients,
            "workers": workers,
            "tmp": tmp_path,
            "db": postgres_url,
            "s3": s3_settings,
        }
    reset_caches()


def _train(client: httpx.Client, **request: object) -> dict:
    response = client.post("/jobs", json={**TINY, **request})
    assert response.status_code == 202, response.text
    return response.json()


def _database_says(database_url: str) -> set[str]:
    """Every object key that the database's rows account for (below the bucket's prefix)."""
    engine = create_engine(database_url)
    keys: set[str] = set()
    try:
        with Session(engine) as session:
            for dataset in session.scalars(select(Dataset)):
                keys.add(f"datasets/{dataset.id}/manifest.json")
            for version in session.scalars(select(ModelVersion)):
                keys.add(f"models/{version.path}/MANIFEST.json")
            review_owners = {item.owner for item in session.scalars(select(ReviewItem))}
    finally:
        engine.dispose()
    assert not review_owners, "the test empties the review queue before it compares"
    return keys


def test_two_apis_and_two_workers_share_only_the_database_broker_and_bucket(cluster) -> None:
    api_a, api_b = cluster["clients"]
    tmp: Path = cluster["tmp"]
    s3 = cluster["s3"]
    log = tmp / "worker-a.log"

    # Upload through API A: the images and the manifest go to the bucket.
    archive = tiny_photo_zip(tmp / "tiny.zip")
    upload = api_a.post(
        "/datasets", files={"file": ("tiny.zip", archive.read_bytes())}, data={"name": "pets"}
    )
    assert upload.status_code == 201, upload.text
    dataset_id = upload.json()["id"]
    in_bucket = bucket_keys(s3)
    assert f"tenant-a/datasets/{dataset_id}/manifest.json" in in_bucket
    assert sum(key.startswith(f"tenant-a/datasets/{dataset_id}/images/") for key in in_bucket) > 8
    assert not (tmp / "api-a" / "datasets" / dataset_id).exists()
    # API B reads it from the bucket.
    assert api_b.get(f"/datasets/{dataset_id}/preview.png").status_code == 200

    # Two jobs at once, through API B: one per worker (each takes one job at a time).
    bottleneck = _train(api_b, dataset_id=dataset_id, method="bottleneck", model_name="pets")
    scratch = _train(api_b, dataset_id=dataset_id, method="scratch", model_name="sketch")
    done = [
        wait_job_finished(api_b, job["id"], log=log, timeout=600) for job in (bottleneck, scratch)
    ]
    for job in done:
        assert job["status"] == "succeeded", (job["error"], log.read_text()[-3000:])
    assert len({job["worker_id"] for job in done}) == 2, "each worker trained one job"
    # Each worker downloaded the images into its own cache, by content hash.
    for name in ("worker-a", "worker-b"):
        cached = list((tmp / name / "cache" / "datasets" / "images").rglob("*"))
        assert any(path.is_file() for path in cached), name
    features = [key for key in bucket_keys(s3) if key.startswith("tenant-a/features/")]
    assert any(key.endswith(".npz") for key in features), features

    # The same bottleneck job again: its features come from the cache (the bucket's copy on
    # whichever worker has not computed them).
    again = wait_job_finished(
        api_a,
        _train(api_a, dataset_id=dataset_id, method="bottleneck", model_name="pets")["id"],
        log=log,
        timeout=600,
    )
    assert again["status"] == "succeeded", again["error"]
    assert again["result"]["feature_cache_hit"] is True

    # Predict through API B, not the one the dataset was uploaded to; no API ever had a
    # model file: B loads the version from the bucket into its own cache.
    photo = next((PHOTOS / "test" / "cats").iterdir()).read_bytes()
    # (A two-epoch model on 32 px images need not beat chance, so it need not be active.)
    chosen = {"model": "pets", "version": str(again["result"]["model"]["version"])}
    answer = api_b.post(
        "/predict", files={"files": ("cat.jpg", photo)}, data={**chosen, "explain": "true"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["runtime"] == "onnxruntime"
    assert list((tmp / "api-b" / "cache" / "models").glob("*/model.onnx"))
    # The explanation made by API B is served by API A.
    explanation = answer.json()["predictions"][0]["explanation"]
    overlay = api_a.get(explanation["url"])
    assert overlay.status_code == 200
    assert overlay.content.startswith(b"\x89PNG")

    # The review queue: the threshold set through A, the image kept by B, served by A.
    assert api_a.put("/models/pets/review", json={"threshold": 1.0}).status_code == 200
    time.sleep(1.0)  # API B reads thresholds again every MODEL_REFRESH_SECONDS (0.5 here)
    unsure = api_b.post("/predict", files={"files": ("cat.jpg", photo)}, data=chosen)
    assert unsure.status_code == 200
    items = api_a.get("/review/items", params={"model": "pets"}).json()
    assert len(items) == 1
    assert api_a.get(f"/review/items/{items[0]['id']}/image").content == photo
    assert any(key.startswith("tenant-a/review/") for key in bucket_keys(s3))
    assert api_b.delete(f"/review/items/{items[0]['id']}").status_code == 204

    # Delete: a model version through API B, the dataset through API A.
    versions = api_b.get("/models/pets/versions").json()
    inactive = [v["version"] for v in versions if not v["is_active"]]
    assert len(versions) == 2 and inactive, versions
    assert api_b.delete(f"/models/pets/versions/{inactive[0]}").status_code == 204
    assert api_a.delete(f"/datasets/{dataset_id}").status_code == 204

    # The bucket holds exactly what the database says: every committed dataset and model
    # version with all its files, nothing of what was deleted, no review image left.
    keys = [key.removeprefix("tenant-a/") for key in bucket_keys(s3)]
    stored = {key for key in keys if key.startswith(("datasets/", "models/", "review/"))}
    commit_points = {key for key in stored if key.endswith(("manifest.json", "MANIFEST.json"))}
    assert commit_points == _database_says(cluster["db"])
    for manifest_key in commit_points:  # and each version's files are all there, no others
        folder = manifest_key.rsplit("/", 1)[0]
        manifest = json.loads(bucket_object(s3, f"tenant-a/{manifest_key}"))
        listed = {f"{folder}/{name}" for name in manifest["files"]} | {manifest_key}
        assert {key for key in stored if key.startswith(f"{folder}/")} == listed
    assert not any(key.startswith(f"datasets/{dataset_id}") for key in keys)
    assert not any(key.startswith("review/") for key in keys)


def bucket_object(s3: dict[str, str], key: str) -> bytes:
    import boto3

    client = boto3.client("s3", endpoint_url=s3["S3_ENDPOINT_URL"])
    body: bytes = client.get_object(Bucket=s3["S3_BUCKET"], Key=key)["Body"].read()
    return body
