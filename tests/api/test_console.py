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
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy
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
