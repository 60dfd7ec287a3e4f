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


def test_compose_defines_the_stack() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "redis", "api", "worker"}
    assert services["api"]["command"] == ["api"]
    assert services["worker"]["command"] == ["worker"]
    for name in ("api", "worker"):
        assert "smallvision-data:/data" in services[name]["volumes"]
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["worker"]["build"]["args"]["TF_FLAVOUR"] == "gpu"


def test_compose_environment_is_valid_production_settings() -> None:
    for name in ("api", "worker"):
        env = {
            key: _substitute_defaults(str(value))
            for key, value in _compose()["services"][name]["environment"].items()
        }
        ours = {
            k.removeprefix(ENV_PREFIX).lower(): v
            for k, v in env.items()
            if k.startswith(ENV_PREFIX)
        }
        assert set(ours) <= set(Settings.model_fields), set(ours) - set(Settings.model_fields)
        settings = Settings(**ours)  # type: ignore[arg-type]
        assert settings.environment == "production"
        assert settings.database_url.startswith("postgresql+psycopg://smallvision:")
        assert settings.database_url.endswith("@postgres:5432/smallvision")
        assert settings.broker_url == "redis://redis:6379/0"
        assert settings.models_dir == Path("/data/models")


def test_dockerfile_builds_one_non_root_image_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert "HEALTHCHECK" in text and "/health" in text
    assert 'ENTRYPOINT ["smallvision-entrypoint"]' in text
    for source in re.findall(r"^COPY\s+(\S+)\s", text, re.MULTILINE):
        assert (PROJECT_ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert re.search(r"\.\[\$\{TF_FLAVOUR\}\]", text)


def _run_entrypoint(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["SMALLVISION_DATA_DIR"] = str(data_dir)
    # The image's `python` is the one with the app installed; here that is this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


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
