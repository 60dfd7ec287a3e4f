"""The API process's memory under the requests that cost it gigabytes before (the second
outside review), on a live API (uvicorn, SQLite, default limits) with a 160 px model: each
request gets its answer, and the process's peak RSS grows by under 200 MB. The same requests,
with the rest of the review's cases, are benchmarks/abuse.py's table in docs/BENCHMARKS.md."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from app.core.config import ENV_PREFIX, PROJECT_ROOT
from benchmarks.abuse import (
    MULTIPART,
    huge_header,
    long_thin_png,
    many_fields,
    measure,
    noise_jpeg,
    one_bit_png,
    smooth_jpeg,
)
from tests.processes import free_port, running_api_process

pytestmark = pytest.mark.slow

GROWTH_LIMIT_MB = 200


@dataclass(frozen=True)
class LiveApi:
    base: str
    pid: int
    predictor: dict[str, str]  # a predict-only key's header
    trainer: dict[str, str]


def _run(env: dict[str, str], *argv: str) -> str:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    tmp = tmp_path_factory.mktemp("memory")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env[f"{ENV_PREFIX}DATA_DIR"] = str(tmp / "var")
    _run(env, "-m", "app.cli", "migrate")
    _run(
        env,
        "-c",
        "from tests.models import register_tiny_model; "
        "register_tiny_model('abuse', image_size=160, owner='memory')",
    )

    def key(scopes: str) -> dict[str, str]:
        made = _run(
            env,
            "-m",
            "app.cli",
            "keys",
            "create",
            "--name",
            scopes,
            "--owner",
            "memory",
            "--scopes",
            scopes,
        )
        return {"Authorization": f"Bearer {made}"}

    with running_api_process(tmp / "api.log", port=free_port(), env=env) as (base, process):
        live = LiveApi(base, process.pid, key("predict"), key("train"))
        # Warm: the model loaded for predictions and, once, for explanations (Grad-CAM needs
        # the Keras model and TensorFlow's gradients: a one-time cost of the process).
        warm = httpx.post(
            f"{base}/predict",
            files={"file": ("w.jpg", smooth_jpeg(64, 64))},
            data={"explain": "true"},
            headers=live.predictor,
            timeout=120,
        )
        assert warm.status_code == 200, warm.text
        yield live


def test_sixteen_long_thin_images_in_one_request(api: LiveApi) -> None:
    """55000x890 1-bit PNGs were decoded at full size, because their reduction came from the
    short side, and all held until the request ended: +3.5 GB for 16."""
    strip = long_thin_png()
    files = [("files", (f"{i}.png", strip)) for i in range(16)]
    response, peak, _, _ = measure(
        api.pid,
        lambda: httpx.post(f"{api.base}/predict", files=files, headers=api.predictor, timeout=300),
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 16
    assert peak < GROWTH_LIMIT_MB, f"+{peak:.0f} MB"


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("25 megapixels", lambda: smooth_jpeg(5000, 5000)),
        ("a 28000x890 strip", lambda: one_bit_png(28000, 890)),
        ("6 MB of noise, 20000x890", lambda: noise_jpeg(20000, 890, quality=30)),
    ],
)
def test_an_explanation_is_drawn_at_a_bounded_size(api: LiveApi, name: str, image) -> None:
    data = image()
    response, peak, _, _ = measure(
        api.pid,
        lambda: httpx.post(
            f"{api.base}/predict",
            files={"file": ("x.jpg", data)},
            data={"explain": "true"},
            headers=api.predictor,
            timeout=300,
        ),
    )
    assert response.status_code == 200, response.text
    assert peak < GROWTH_LIMIT_MB, f"{name}: +{peak:.0f} MB"
    explanation = response.json()["predictions"][0]["explanation"]
    overlay = base64.b64decode(explanation["png_base64"])
    assert max(Image.open(io.BytesIO(overlay)).size) <= 512
    assert len(response.content) < 1.5 * 1024 * 1024  # was 68.8 MB for the noise image
    stored = httpx.get(f"{api.base}{explanation['url']}", headers=api.predictor)
    assert stored.content == overlay


def test_a_huge_header_is_refused_at_once_and_others_are_served_meanwhile(api: LiveApi) -> None:
    """A 400 MB header was buffered whole (and its parsing held the event loop for seconds)."""
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            assert httpx.get(f"{api.base}/health", timeout=30).status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        (answer, sent), peak, lasting, _ = measure(
            api.pid, lambda: huge_header(api.base, total=400 * 1024 * 1024)
        )
    finally:
        stop.set()
        prober.join()
    assert answer.startswith("HTTP/1.1 431") or answer.startswith("connection"), answer
    assert sent < 32 * 1024 * 1024  # the server stopped taking it long before the end
    assert max(latencies) < 0.5, max(latencies)
    assert peak < 50 and lasting < 20, (peak, lasting)
    ok = httpx.get(f"{api.base}/health", headers={"X-Fine": "a" * 60_000})
    assert ok.status_code == 200  # 60 KB of headers are still served


@pytest.mark.parametrize("path", ["/datasets", "/datasets/{id}/versions"])
def test_thousands_of_form_fields_are_refused_at_once(api: LiveApi, path: str) -> None:
    """8000 fields of 60 KB and no file were all held (+484 MB) before the 400."""
    url = f"{api.base}{path.replace('{id}', '00000000-0000-0000-0000-000000000000')}"
    response, peak, _, seconds = measure(
        api.pid,
        lambda: httpx.post(url, content=many_fields(), headers={**api.trainer, **MULTIPART}),
    )
    assert response.status_code == 413, response.text
    assert "text fields" in response.json()["detail"]  # too many, or too large together
    assert peak < 20, f"+{peak:.0f} MB"
    assert seconds < 5
