"""The client's answer types (smallvision/client.py) against the server's OpenAPI schema: the
same keys, the same ones always present, the same status and method names. A field added to
a response model and not to the client (or the other way round) fails here."""

from __future__ import annotations

import typing
from typing import Any, NotRequired

import pytest

from smallvision import client

# client type -> the schema's component of the same answer
PAIRS = {
    client.Dataset: "DatasetRead",
    client.JobAccepted: "JobAccepted",
    client.Job: "JobRead",
    client.JobMetrics: "JobMetrics",
    client.Epoch: "EpochRead",
    client.Evaluation: "Evaluation",
    client.ClassScores: "ClassScores",
    client.CalibrationReport: "CalibrationReport",
    client.PlattScores: "PlattScores",
    client.OutlierReport: "OutlierReport",
    client.LabelProbability: "LabelProbability",
    client.Explanation: "Explanation",
    client.ImagePrediction: "ImagePrediction",
    client.Prediction: "PredictResponse",
    client.Candidate: "Candidate",
    client.Chosen: "Chosen",
    client.ModelRef: "ModelRef",
    client.DatasetRef: "DatasetRef",
    client.Timings: "Timings",
    client.RunRuntime: "RunRuntime",
    client.JobResult: "JobResult",
    client.WorkerReport: "WorkerReport",
    client.Model: "ModelRead",
    client.ModelVersion: "ModelVersionRead",
    client.Export: "ExportRead",
    client.ExportCheck: "ExportCheck",
    client.ImageAnswer: "ImageAnswer",
    client.JobPredictions: "JobPredictions",
    client.ClassProbability: "ClassProbability",
    client.Suggestion: "Suggestion",
    client.SuggestionList: "SuggestionList",
    client.LabelIssue: "LabelIssue",
    client.LabelIssueList: "LabelIssueList",
}


@pytest.fixture(scope="module")
def components() -> dict[str, Any]:
    from app.main import create_app

    schemas: dict[str, Any] = create_app().openapi()["components"]["schemas"]
    return schemas


def _component(components: dict[str, Any], name: str) -> dict[str, Any]:
    """A response model's schema (FastAPI names it `<name>-Output` where the request and the
    response forms differ)."""
    found = components.get(f"{name}-Output", components.get(name))
    assert found is not None, f"no {name} in the OpenAPI schema"
    return dict(found)


@pytest.mark.parametrize(("typed", "name"), PAIRS.items(), ids=[n for n in PAIRS.values()])
def test_the_client_type_has_the_schemas_keys(
    components: dict[str, Any], typed: type, name: str
) -> None:
    schema = _component(components, name)
    # From the hints: the module's postponed annotations hide NotRequired from __required_keys__.
    hints = typing.get_type_hints(typed, include_extras=True)
    required = {key for key, hint in hints.items() if typing.get_origin(hint) is not NotRequired}
    assert set(hints) == set(schema["properties"]), name
    assert required == set(schema.get("required", [])), name


def test_statuses_and_methods_are_the_servers(components: dict[str, Any]) -> None:
    assert set(typing.get_args(client.JobStatus)) == set(components["JobStatus"]["enum"])
    assert set(typing.get_args(client.Method)) == set(components["Method"]["enum"])
    assert set(typing.get_args(client.JobStatus)) > client.FINISHED_STATUSES


def test_every_response_model_of_a_route_the_client_calls_is_checked(
    components: dict[str, Any],
) -> None:
    """The models the client's answers come from are all paired above (a new one must be)."""
    reached = {"DatasetRead", "JobAccepted", "JobRead", "JobMetrics", "ModelRead",
               "ModelVersionRead", "ExportRead"}  # fmt: skip  # one set, as the routes list them
    assert reached <= set(PAIRS.values())
    for name in reached:
        _component(components, name)
