"""The console's files: served without a key, under a policy that refuses inline script."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.api.routes.console import ASSETS, CONSOLE_DIR
from app.main import create_app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())  # no lifespan: these routes touch no database or model


def test_the_address_leads_to_the_console_page(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.url.path == "/ui"
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    # WebAssembly may be compiled (ONNX Runtime Web's); eval and inline scripts may not
    assert "script-src 'self' 'wasm-unsafe-eval';" in policy
    assert "unsafe-inline" not in policy and "'unsafe-eval'" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    # Every file the page names is served, and the page itself has no inline script or style.
    names = re.findall(r'(?:src|href)="/ui/assets/([^"]+)"', response.text)
    assert {"main.js", "console.css"} <= set(names)
    for name in names:
        asset = client.get(f"/ui/assets/{name}")
        assert asset.status_code == 200 and "content-security-policy" in asset.headers
    assert not re.search(r"<script(?![^>]*\bsrc=)", response.text)
    assert "<style" not in response.text and " style=" not in response.text


def test_every_module_the_scripts_import_is_served() -> None:
    for script in CONSOLE_DIR.glob("*.js"):
        for imported in re.findall(r'from "\./([^"]+)"', script.read_text()):
            assert imported in ASSETS, f"{script.name} imports {imported}, which is not served"


def test_scripts_never_write_html() -> None:
    """User strings reach the page as text: the scripts have no way to write markup."""
    for script in CONSOLE_DIR.glob("*.js"):
        source = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, f"{script.name} uses {sink}"


@pytest.mark.parametrize(
    "path",
    ["/ui/assets/nope.js", "/ui/assets/..%2Fapi%2Froutes%2Fconsole.py", "/ui/assets/index.html"],
)
def test_anything_else_under_ui_is_a_json_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_onnx_runtime_web_is_served_from_its_npm_package_and_nothing_else(
    client: TestClient,
) -> None:
    from app.api.routes.console import VENDOR_DIR, VENDOR_FILES

    for name in VENDOR_FILES:
        assert (VENDOR_DIR / name).is_file(), f"{name}: make install runs npm ci in app/console"
    wasm = client.get("/ui/vendor/ort-wasm-simd-threaded.wasm")
    assert wasm.status_code == 200 and wasm.headers["content-type"] == "application/wasm"
    assert wasm.content[:4] == b"\0asm"
    script = client.get("/ui/vendor/ort.wasm.min.mjs")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "wasm-unsafe-eval" in script.headers["content-security-policy"]
    # only the listed files: not the rest of the package, nor anything else on disk
    for name in ("ort.all.min.mjs", "..%2Fpackage.json", "package.json"):
        assert client.get(f"/ui/vendor/{name}").status_code == 404
