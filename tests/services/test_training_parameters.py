"""What a job request becomes: the stored parameters and the ML layer's config."""

from __future__ import annotations

import uuid

import pytest

from app.schemas.jobs import JobCreate
from app.services.jobs import training_parameters
from app.services.training import train_config


@pytest.mark.parametrize(
    ("method", "stored"),
    [("auto", True), ("finetune", True), ("bottleneck", None), ("scratch", None)],
)
def test_refit_on_validation_is_stored_for_the_methods_that_fine_tune(
    method: str, stored: bool | None
) -> None:
    request = JobCreate(dataset_id=uuid.uuid4(), method=method)
    parameters = training_parameters(request, dataset_name="pets")
    assert parameters.get("refit_on_validation") is stored
    assert train_config(method, parameters).refit_on_validation is bool(stored)


def test_a_job_stored_before_refit_existed_runs_as_it_was_asked() -> None:
    request = JobCreate(dataset_id=uuid.uuid4(), method="auto")
    parameters = training_parameters(request, dataset_name="pets")
    del parameters["refit_on_validation"]
    assert train_config("auto", parameters).refit_on_validation is False
    asked_not_to = JobCreate(dataset_id=uuid.uuid4(), refit_on_validation=False)
    assert not train_config("auto", training_parameters(asked_not_to, dataset_name="pets")
                            ).refit_on_validation  # fmt: skip
