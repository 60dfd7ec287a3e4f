"""docker-compose.yml, the Dockerfile and the entry point agree with each other and the code.

No Docker engine runs here, so these read the files and run the entry point script directly.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from app.core.config import ENV_PREFIX, PROJECT_ROOT, Settings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
ENTRYPOINT = PROJECT_ROOT / "docker" / "entrypoint.sh"


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _substitute_defaults(value: str) -> str:
    """${VAR:-default} -> default, as compose does when VAR is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _smallvision_services() -> dict[str, dict[str, Any]]:
    """The services that run our image: the API replicas and the workers."""
    services = _compose()["services"]
    return {n: s for n, s in services.items() if str(s.get("image", "")).startswith("smallvision")}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {key: _substitute_defaults(str(value)) for key, value in service["environment"].items()}


def test_compose_defines_the_stack() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "minio",
        "minio-init",
        "api",
        "api-2",
        "proxy",
        "worker",
    }
    assert set(_smallvision_services()) == {"api", "api-2", "worker"}
    assert services["api"]["command"] == services["api-2"]["command"] == ["api"]
    assert services["worker"]["command"] == ["worker"]
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # one replica migrates at a time: the second starts once the first serves
    assert services["api-2"]["depends_on"]["api"]["condition"] == "service_healthy"
    for name in ("api", "api-2", "worker"):
        condition = services[name]["depends_on"]["minio-init"]["condition"]
        assert condition == "service_completed_successfully", name
    # the proxy is the one way in
    assert [name for name, s in services.items() if s.get("ports")] == ["proxy"]
    assert services["proxy"]["ports"] == ["8000:8000"]
    assert services["minio"]["healthcheck"]["test"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["worker"]["build"]["args"]["TF_FLAVOUR"] == "gpu"


# The bucket settings of issue 17, with the values the compose stack gives them.
BUCKET_SETTINGS = {
    "SMALLVISION_STORAGE_BACKEND": "s3",
    "SMALLVISION_S3_ENDPOINT_URL": "http://minio:9000",
    "SMALLVISION_S3_BUCKET": "smallvision",
    "SMALLVISION_S3_PREFIX": "",
    "SMALLVISION_S3_REGION": "us-east-1",
}


def test_every_node_gets_the_bucket_a_local_cache_and_the_shared_limits() -> None:
    minio = _environment(_compose()["services"]["minio"])
    for name, service in _smallvision_services().items():
        env = _environment(service)
        assert {key: env.get(key) for key in BUCKET_SETTINGS} == BUCKET_SETTINGS, name
        # boto3's own variables: MinIO's root credentials in this stack
        assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"], name
        assert env["SMALLVISION_CACHE_DIR"] == "/cache", name
        assert "/cache" in service["volumes"], name  # anonymous: each container its own
        # the rate limits' Redis database is not the queue's
        assert env["SMALLVISION_REDIS_URL"] == "redis://redis:6379/1", name
        assert env["SMALLVISION_BROKER_URL"] == "redis://redis:6379/0", name


def test_the_bucket_is_created_under_the_name_the_services_use() -> None:
    init = _compose()["services"]["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    env = _environment(init)
    assert env["SMALLVISION_S3_BUCKET"] == BUCKET_SETTINGS["SMALLVISION_S3_BUCKET"]
    script = " ".join(init["command"])
    assert '"$$SMALLVISION_S3_ENDPOINT_URL"' in script  # $$: the shell expands it, not compose
    assert 'mc mb --ignore-existing "smallvision/$$SMALLVISION_S3_BUCKET"' in script


def test_nodes_share_no_volume_but_the_read_only_weights() -> None:
    """With a bucket, API nodes and workers share only the database, Redis and the bucket."""
    assert "smallvision-data" not in _compose()["volumes"]
    writers: dict[str, set[str]] = {}
    for name, service in _smallvision_services().items():
        for volume in service["volumes"]:
            source, _, target = volume.partition(":")
            if target.endswith(":ro"):
                assert source == "./weights", (name, volume)
            elif target:  # a lone "/cache" is an anonymous volume, never shared
                writers.setdefault(source, set()).add(name)
    assert {source: names for source, names in writers.items() if len(names) > 1} == {}


NGINX = PROJECT_ROOT / "docker" / "nginx.conf"


def _nginx_seconds(text: str, directive: str) -> int:
    match = re.search(rf"^\s*{directive}\s+(\d+)s;", text, re.MULTILINE)
    assert match, f"{directive} is not set in {NGINX}"
    return int(match.group(1))


def test_the_proxy_balances_every_api_replica_and_lets_uploads_through() -> None:
    from app.api.bodies import MULTIPART_OVERHEAD_BYTES

    services = _compose()["services"]
    assert "./docker/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in services["proxy"]["volumes"]
    text = NGINX.read_text()
    upstream = re.search(r"upstream smallvision_api \{(.*?)\}", text, re.DOTALL)
    assert upstream and "proxy_pass http://smallvision_api;" in text
    replicas = {name for name, s in services.items() if s.get("command") == ["api"]}
    servers = re.findall(r"^\s*server ([\w-]+):8000\b", upstream.group(1), re.MULTILINE)
    assert sorted(servers) == sorted(replicas)
    settings = Settings()
    body = re.search(r"^\s*client_max_body_size (\d+)m;", text, re.MULTILINE)
    # more than the API takes, so that the API refuses what is over (a JSON 413)
    assert body and int(body.group(1)) * 1024**2 > (
        settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    )
    assert re.search(r"^\s*proxy_request_buffering off;", text, re.MULTILINE)
    # the API's own timeouts answer first (408 for a stalled body, 503 for a slow prediction)
    assert _nginx_seconds(text, "client_body_timeout") > settings.body_read_timeout_seconds
    assert _nginx_seconds(text, "proxy_read_timeout") > settings.predict_timeout_seconds


def test_compose_environment_is_valid_production_settings() -> None:
    # Until the storage change of issue 17 lands, the bucket settings are the only names
    # Settings may lack; once any of them is a field, all must be (spelled as here).
    bucket = {
        key.removeprefix(ENV_PREFIX).lower() for key in [*BUCKET_SETTINGS, "SMALLVISION_CACHE_DIR"]
    }
    landed = bucket & set(Settings.model_fields)
    known = set(Settings.model_fields) | (set() if landed else bucket)
    for name, service in _smallvision_services().items():
        ours = {
            key.removeprefix(ENV_PREFIX).lower(): value
            for key, value in _environment(service).items()
            if key.startswith(ENV_PREFIX)
        }
        assert set(ours) <= known, (name, set(ours) - known)
        settings = Settings(**ours)  # type: ignore[arg-type]
        assert settings.environment == "production"
        assert settings.database_url.startswith("postgresql+psycopg://smallvision:")
        assert settings.database_url.endswith("@postgres:5432/smallvision")
        assert settings.broker_url == "redis://redis:6379/0"
        assert settings.redis_url == "redis://redis:6379/1"
        assert settings.models_dir == Path("/data/models")


def test_dockerfile_builds_one_non_root_image_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert "HEALTHCHECK" in text and "/health" in text
    assert 'ENTRYPOINT ["smallvision-entrypoint"]' in text
    for source in re.findall(r"^COPY\s+(?!--from)(\S+)\s", text, re.MULTILINE):
        assert (PROJECT_ROOT / source).exists(), f"Dockerfile copies missing {source}"
    # the console's browser runtime comes from its npm stage: every file the API serves
    from app.api.routes.console import VENDOR_FILES

    assert "FROM node:" in text and "npm ci" in text
    for name in VENDOR_FILES:
        assert f"/console/node_modules/onnxruntime-web/dist/{name}" in text, name
    assert re.search(r"\.\[\$\{TF_FLAVOUR\}\]", text)
    # the cache volume compose mounts exists in the image, writable by its user
    assert re.search(r'^VOLUME \[.*"/cache".*\]', text, re.MULTILINE)
    assert re.search(r"chown -R smallvision:smallvision .*/cache", text)


def _run_entrypoint(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["SMALLVISION_DATA_DIR"] = str(data_dir)
    # The image's `python` is the one with the app installed; here that is this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_entrypoint_migrate_creates_the_schema(tmp_path: Path) -> None:
    result = _run_entrypoint("migrate", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "smallvision.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"datasets", "training_jobs", "epoch_metrics", "model_versions"} <= tables


def test_entrypoint_passes_other_commands_through(tmp_path: Path) -> None:
    result = _run_entrypoint("echo", "hello", data_dir=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == "hello"
