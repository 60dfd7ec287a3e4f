"""A write is committed before its response is sent, and files go only after the commit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from app.core.config import get_settings
from app.main import create_app
from tests.conftest import auth_headers, migrate
from tests.models import register_tiny_model
from tests.zips import class_folders, make_zip


@contextmanager
def _commits_fail() -> Iterator[None]:
    """The COMMIT of every transaction that wrote something fails (as when the database drops
    between the last statement and the commit); read-only ones, such as the API key check,
    commit as usual."""

    def note_writes(conn, cursor, statement: str, *args: object) -> None:
        if statement.lstrip().split(" ", 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}:
            conn.info["wrote"] = True

    def refuse(conn) -> None:
        if conn.info.pop("wrote", False):
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    def forget(conn) -> None:
        conn.info.pop("wrote", None)

    listeners = [("before_cursor_execute", note_writes), ("commit", refuse), ("rollback", forget)]
    for name, listener in listeners:
        event.listen(Engine, name, listener)
    try:
        yield
    finally:
        for name, listener in listeners:
            event.remove(Engine, name, listener)


@pytest.fixture
def client(configure, postgres_url: str) -> Iterator[TestClient]:
    configure(database_url=postgres_url, MODEL_REFRESH_SECONDS="3600")
    migrate(postgres_url)
    with TestClient(
        create_app(), headers=auth_headers(), raise_server_exceptions=False
    ) as test_client:
        yield test_client


def test_a_dataset_delete_whose_commit_fails_is_not_204_and_keeps_the_files(client) -> None:
    zip_bytes = make_zip(class_folders({"cats": 3, "dogs": 3}))
    created = client.post("/datasets", files={"file": ("d.zip", zip_bytes)}, data={"name": "d"})
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    folder = get_settings().datasets_dir / dataset_id
    assert folder.is_dir()
    with _commits_fail():
        response = client.delete(f"/datasets/{dataset_id}")
    assert response.status_code == 503, response.text  # the client hears the failure
    assert folder.is_dir()  # and the files of the dataset that still exists are still there
    assert client.get(f"/datasets/{dataset_id}").status_code == 200


def test_an_upload_whose_commit_fails_is_not_201_and_leaves_no_files(client) -> None:
    zip_bytes = make_zip(class_folders({"cats": 3, "dogs": 3}))
    with _commits_fail():
        response = client.post(
            "/datasets", files={"file": ("d.zip", zip_bytes)}, data={"name": "d"}
        )
    assert response.status_code == 503, response.text
    assert client.get("/datasets").json() == []
    leftovers = [p for p in get_settings().datasets_dir.iterdir() if not p.name.startswith(".")]
    assert leftovers == []


def test_an_activation_whose_commit_fails_is_not_200(client) -> None:
    for _ in range(2):
        register_tiny_model("pets")
    with _commits_fail():
        response = client.post("/models/pets/versions/2/activate")
    assert response.status_code == 503, response.text
    versions = {v["version"]: v["is_active"] for v in client.get("/models/pets/versions").json()}
    assert versions == {1: True, 2: False}
