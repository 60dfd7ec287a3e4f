"""Schemathesis against the live OpenAPI schema, every operation, with an admin key: no 5xx,
every status code, content type and body as documented. A longer run: benchmarks/fuzz.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from app.main import create_app
from tests.conftest import auth_headers, migrate
from tests.models import register_tiny_model

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
CHECKS = (
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
)


def fuzz_all_operations(
    schema,
    *,
    headers: dict[str, str],
    examples: int,
    prepare: Callable[[Any], None] = lambda case: None,
    answered: Callable[[Any], None] = lambda response: None,
) -> list[str]:
    """Run `examples` generated cases per operation; return one line per failing operation.
    `prepare` may change a case before it is sent, `answered` checks more of each response.
    (Driven by hand rather than with `schema.parametrize()`, whose pytest plugin does not
    run under pytest 9.)"""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case) -> None:
            prepare(case)
            answered(case.call_and_validate(headers=headers, checks=CHECKS))

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {str(exc).strip()[:1500]}")
    return failures


def test_no_server_errors_and_answers_match_the_schema(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600")
    migrate(sqlite_url)
    register_tiny_model("pets", owner="tester")  # so predictions can succeed too
    headers = auth_headers("admin")
    app = create_app()
    with TestClient(app):  # runs the lifespan: the model cache exists
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        assert len(list(schema.get_all_operations())) > 30
        failures = fuzz_all_operations(schema, headers=headers, examples=EXAMPLES)
    assert not failures, "\n\n".join(failures)


def test_the_custom_vision_routes_answer_bad_input_with_custom_vision_errors(
    configure, sqlite_url: str
) -> None:
    """Every Custom Vision operation, with both keys and a real API version, half the cases
    on a real project of the caller's: no 5xx, and every 4xx is a {code, message} body."""
    configure(database_url=sqlite_url, MODEL_REFRESH_SECONDS="3600")
    migrate(sqlite_url)
    key = auth_headers("admin")["Authorization"].removeprefix("Bearer ")
    headers = {"Training-Key": key, "Prediction-Key": key}
    app = create_app()
    with TestClient(app) as client:
        project = client.post(
            "/customvision/v3.3/training/projects", params={"name": "fuzzed"}, headers=headers
        ).json()["id"]
        client.post(
            f"/customvision/v3.3/training/projects/{project}/tags",
            params={"name": "cat"},
            headers=headers,
        )

        def prepare(case: Any) -> None:
            parameters = case.path_parameters or {}
            parameters["api_version"] = "v3.3"
            # (the project stays for the other operations: its DELETE gets made-up ids)
            deletes_it = case.method == "DELETE" and case.path.endswith("/{project_id}")
            odd = len(str(parameters.get("project_id", ""))) % 2
            if "project_id" in parameters and odd and not deletes_it:
                parameters["project_id"] = project

        def answered(response: Any) -> None:
            if 400 <= response.status_code < 500:
                assert set(response.json()) == {"code", "message"}, response.text

        schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(
            path_regex="^/customvision/\\{api_version\\}"
        )
        operations = len(list(schema.get_all_operations()))
        assert operations > 40
        failures = fuzz_all_operations(
            schema, headers=headers, examples=EXAMPLES, prepare=prepare, answered=answered
        )
    assert not failures, "\n\n".join(failures)
