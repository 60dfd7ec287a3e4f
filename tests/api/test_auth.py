"""API keys: every endpoint but health needs one, scopes decide what it may do, and one key's
datasets, jobs and models are invisible to another (404), unless the key is admin."""

from __future__ import annotations

import io
import re
import uuid
import zipfile
from contextlib import redirect_stdout

import pytest
from fastapi.testclient import TestClient

from app.cli import main as cli_main
from app.main import create_app
from tests.conftest import api_key, migrate
from tests.models import register_tiny_model
from tests.zips import image_bytes

# Open without a key: liveness/readiness probes and the protocol's server-level health.
OPEN_PATHS = {"/health", "/ready", "/v2/health/live", "/v2/health/ready", "/v2"}
# Links that are their own credential: an export's download link (a random token, made for
# that export), as Azure Custom Vision's signed storage links are.
CAPABILITY_PATHS = {"/customvision/exports/{token}/{export}"}


@pytest.fixture
def app_client(configure, sqlite_url: str):
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600")
    migrate(sqlite_url)
    with TestClient(create_app()) as client:
        yield client


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _key_id(key: str) -> uuid.UUID:
    from sqlalchemy import select

    from app.db.models import ApiKey
    from app.db.session import session_scope

    with session_scope() as session:
        return session.scalar(select(ApiKey.id).where(ApiKey.prefix == key.split("_")[1]))


def _dataset_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in ("cats", "dogs"):
            for index in range(3):
                archive.writestr(
                    f"{label}/{index}.png",
                    image_bytes("PNG", seed=index + (100 if label == "dogs" else 0)),
                )
    return buffer.getvalue()


def _operations(client: TestClient) -> list[tuple[str, str]]:
    schema = client.get("/openapi.json").json()
    return [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if path not in OPEN_PATHS | CAPABILITY_PATHS
    ]


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: str(uuid.uuid4()) if "id" in m.group(0) else "1", path)


def test_every_endpoint_but_health_needs_a_key(app_client: TestClient) -> None:
    operations = _operations(app_client)
    assert len(operations) > 25
    for method, path in operations:
        response = app_client.request(method, _concrete(path))
        assert response.status_code == 401, (method, path, response.text)
        if path.startswith("/customvision/"):  # Custom Vision's shape, for its SDKs
            assert response.json()["code"] == "Unauthorized", (path, response.text)
        else:
            error = response.json()["error"]  # /v1 and /v2 carry the message in "error"
            assert error == "unauthorized" or "API key is required" in error, (path, error)
        assert response.headers["www-authenticate"] == "Bearer"
    for path in OPEN_PATHS - {"/v2/health/ready"}:
        assert app_client.get(path).status_code == 200, path


def test_invalid_revoked_and_x_api_key_header(app_client: TestClient) -> None:
    key = api_key("train")
    assert app_client.get("/datasets", headers=_bearer(key)).status_code == 200
    assert app_client.get("/datasets", headers={"X-API-Key": key}).status_code == 200
    for bad in ("nonsense", "sv_nope_nope", key[:-2] + "xx", f"sv_{key.split('_')[1]}"):
        response = app_client.get("/datasets", headers=_bearer(bad))
        assert response.status_code == 401, bad
        assert response.json()["detail"] == "invalid or revoked API key"
    with redirect_stdout(io.StringIO()):
        assert cli_main(["keys", "revoke", str(_key_id(key))]) == 0
    assert app_client.get("/datasets", headers=_bearer(key)).status_code == 401


def test_an_address_sending_invalid_keys_is_refused_before_they_are_looked_up(
    configure, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import auth

    configure(database_url=sqlite_url, FAILED_KEY_BURST="20", FAILED_KEYS_PER_SECOND="0.5")
    migrate(sqlite_url)
    good = api_key("train")
    lookups = []
    authenticate = auth.authenticate

    def counted(session, *, key):
        lookups.append(key)
        return authenticate(session, key=key)

    monkeypatch.setattr(auth, "authenticate", counted)
    with TestClient(create_app()) as client:
        assert client.get("/datasets", headers=_bearer(good)).status_code == 200  # remembered
        statuses = [
            client.get("/datasets", headers=_bearer(f"sv_{i:012x}_{'x' * 43}")).status_code
            for i in range(30)
        ]
        assert statuses == [401] * 20 + [429] * 10
        assert len(lookups) == 1 + 20  # the refused ten were never looked up
        refused = client.get("/datasets", headers=_bearer("sv_000000000000_" + "y" * 43))
        assert refused.json()["detail"].startswith(
            "this address sent over 0.5 invalid API keys per second (bursts of 20); retry in"
        )
        assert int(refused.headers["Retry-After"]) >= 1
        # A key it verified before still works from there; an anonymous request is a 401.
        assert client.get("/datasets", headers=_bearer(good)).status_code == 200
        assert client.get("/datasets").status_code == 401


def test_scopes(app_client: TestClient) -> None:
    register_tiny_model("pets")
    trainer, predictor = _bearer(api_key("train")), _bearer(api_key("predict"))
    photo = {"file": ("x.jpg", image_bytes())}

    assert (
        app_client.post(
            "/jobs", json={"dataset_id": str(uuid.uuid4())}, headers=predictor
        ).status_code
        == 403
    )
    assert app_client.get("/datasets", headers=predictor).status_code == 403
    forbidden = app_client.post("/predict", files=photo, headers=trainer)
    assert forbidden.status_code == 403
    assert forbidden.json() == {
        "error": "forbidden",
        "detail": "this API key lacks the predict scope",
    }
    assert app_client.get("/metrics", headers=trainer).status_code == 403
    assert app_client.post("/workers/check", headers=trainer).status_code == 403
    # Registry reads are open to both; changes and the model files themselves need train.
    assert app_client.get("/models", headers=predictor).status_code == 200
    assert app_client.post("/models/pets/versions/1/activate", headers=predictor).status_code == 403
    for fmt in ("keras", "onnx", "savedmodel"):
        download = app_client.get(
            "/models/pets/versions/1/download", params={"format": fmt}, headers=predictor
        )
        assert download.status_code == 403, (fmt, download.text)
        assert download.json()["detail"] == "this API key lacks the train scope"
    # (a train key of another owner than the model's: 404, not 403)
    assert app_client.get("/models/pets/versions/1/download", headers=trainer).status_code == 404
    for method, path in (("GET", "exports"), ("POST", "exports/savedmodel")):
        url = f"/models/pets/versions/1/{path}"
        assert app_client.request(method, url, headers=predictor).status_code == 403
    assert app_client.get("/v2/models/pets/ready", headers=trainer).status_code == 403
    # admin holds every scope
    admin = _bearer(api_key("admin"))
    assert app_client.get("/metrics", headers=admin).status_code == 200
    assert app_client.post("/predict", files=photo, headers=admin).status_code == 200


def test_one_keys_data_is_invisible_to_another(app_client: TestClient) -> None:
    alice_key, bob_key = (
        api_key("train", "predict", owner="alice"),
        api_key("train", "predict", owner="bob"),
    )
    alice, bob, admin = _bearer(alice_key), _bearer(bob_key), _bearer(api_key("admin"))

    uploaded = app_client.post(
        "/datasets",
        files={"file": ("d.zip", _dataset_zip())},
        data={"name": "alice-pets"},
        headers=alice,
    )
    assert uploaded.status_code == 201, uploaded.text
    dataset_id = uploaded.json()["id"]
    register_tiny_model("alice-model", owner="alice")

    # Alice sees hers; Bob gets 404 for every way in, and empty lists.
    assert app_client.get(f"/datasets/{dataset_id}", headers=alice).status_code == 200
    for method, path in [
        ("GET", f"/datasets/{dataset_id}"),
        ("GET", f"/datasets/{dataset_id}/preview.png"),
        ("DELETE", f"/datasets/{dataset_id}"),
        ("GET", "/models/alice-model/versions"),
        ("GET", "/models/alice-model/versions/1/download"),
        ("POST", "/models/alice-model/versions/1/activate"),
        ("DELETE", "/models/alice-model/versions/1"),
        ("GET", "/v1/models/alice-model"),
        ("GET", "/v2/models/alice-model"),
    ]:
        assert app_client.request(method, path, headers=bob).status_code == 404, (method, path)
    assert app_client.get("/datasets", headers=bob).json() == []
    assert app_client.get("/models", headers=bob).json() == []
    not_his = app_client.post("/jobs", json={"dataset_id": dataset_id}, headers=bob)
    assert not_his.status_code == 404
    photo = {"file": ("x.jpg", image_bytes())}
    assert (
        app_client.post(
            "/predict", files=photo, data={"model": "alice-model"}, headers=bob
        ).status_code
        == 404
    )
    assert app_client.post("/predict", files=photo, headers=bob).status_code == 409  # he has none
    assert app_client.post("/predict", files=photo, headers=alice).json()["model"] == "alice-model"

    # Another key of Alice's (a predict-only key for her app) reaches her models, not Bob's.
    alices_app = _bearer(api_key("predict", owner="alice"))
    assert (
        app_client.post("/predict", files=photo, headers=alices_app).json()["model"]
        == "alice-model"
    )
    assert app_client.get("/models", headers=alices_app).json()[0]["name"] == "alice-model"

    # Admin sees everything.
    assert [d["id"] for d in app_client.get("/datasets", headers=admin).json()] == [dataset_id]
    assert app_client.get("/models/alice-model/versions", headers=admin).status_code == 200

    # Bob's own dataset: his jobs stay his, and Alice's model name is taken for him.
    bobs = app_client.post(
        "/datasets",
        files={"file": ("d.zip", _dataset_zip())},
        data={"name": "bob-pets"},
        headers=bob,
    )
    taken = app_client.post(
        "/jobs", json={"dataset_id": bobs.json()["id"], "model_name": "alice-model"}, headers=bob
    )
    assert taken.status_code == 409
    assert taken.json()["detail"] == "model_name 'alice-model' is not available: choose another"


def test_cli_creates_lists_and_revokes_keys(app_client: TestClient) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["keys", "create", "--name", "ci", "--scopes", "predict"]) == 0
    key = out.getvalue().strip()
    assert re.fullmatch(r"sv_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    assert app_client.get("/models", headers=_bearer(key)).status_code == 200

    listing = io.StringIO()
    with redirect_stdout(listing):
        assert cli_main(["keys", "list"]) == 0
    assert "ci" in listing.getvalue() and "predict" in listing.getvalue()
    assert key.split("_", 2)[2] not in listing.getvalue()  # never the secret

    with redirect_stdout(io.StringIO()):
        assert cli_main(["keys", "create", "--name", "x", "--scopes", "root"]) == 2
        assert cli_main(["keys", "revoke", str(uuid.uuid4())]) == 2


def test_only_a_hash_of_the_secret_is_stored(app_client: TestClient) -> None:
    from sqlalchemy import select

    from app.db.models import ApiKey
    from app.db.session import session_scope

    key = api_key("predict")
    with session_scope() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == key.split("_")[1]))
        stored = " ".join(str(value) for value in vars(row).values())
    assert key.split("_", 2)[2] not in stored
