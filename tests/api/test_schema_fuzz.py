"""Schemathesis against the live OpenAPI schema, every operation, with an admin key: no 5xx,
every status code, content type and body as documented. A longer run: benchmarks/fuzz.py."""

from __future__ import annotations

import os

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


def fuzz_all_operations(schema, *, headers: dict[str, str], examples: int) -> list[str]:
    """Run `examples` generated cases per operation; return one line per failing operation.
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
            case.call_and_validate(headers=headers, checks=CHECKS)

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
