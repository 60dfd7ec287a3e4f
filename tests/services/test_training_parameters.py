"""What a job request becomes: the stored parameters, the ML layer's config, and stored rows
of an earlier release."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from app.ml import config
from app.ml.config import TrainConfig
from app.schemas.jobs import JobCreate
from app.schemas.training import (
    PARAMETERS_VERSION,
    StoredParameters,
    TrainingParameters,
)


def _stored(**request: object) -> StoredParameters:
    job = JobCreate(dataset_id=uuid.uuid4(), **request)  # type: ignore[arg-type]
    return job.training().with_defaults(model_name="pets")


def _through_the_row(parameters: StoredParameters) -> StoredParameters:
    return StoredParameters.load(parameters.stored(), method=parameters.method.value)


@pytest.mark.parametrize(
    ("method", "refit"),
    [("auto", True), ("finetune", True), ("bottleneck", True), ("scratch", True)],
)
def test_refit_on_validation_is_what_the_request_said(method: str, refit: bool) -> None:
    parameters = _stored(method=method)
    assert parameters.refit_on_validation is refit
    assert _through_the_row(parameters).to_train_config().refit_on_validation is refit


def test_a_job_stored_before_refit_existed_runs_as_it_was_asked() -> None:
    stored = _stored(method="auto").stored()
    del stored["refit_on_validation"], stored["version"], stored["method"]
    assert StoredParameters.load(stored, method="auto").to_train_config().refit_on_validation is (
        False
    )
    asked_not_to = _through_the_row(_stored(refit_on_validation=False))
    assert not asked_not_to.to_train_config().refit_on_validation


def test_the_method_and_base_decide_what_the_request_leaves_out() -> None:
    scratch = _stored(method="scratch")
    scratch_defaults = config.METHOD_DEFAULTS[config.Method.SCRATCH]
    assert (scratch.image_size, scratch.epochs, scratch.learning_rate) == (
        scratch_defaults.image_size,
        scratch_defaults.epochs,
        scratch_defaults.learning_rate,
    )
    auto = _stored()
    assert (auto.image_size, auto.epochs, auto.learning_rate) == (224, None, None)
    assert auto.model_name == "pets" and auto.version == PARAMETERS_VERSION
    assert _stored(model_name="mine", image_size=96).model_dump(
        include={"model_name", "image_size"}
    ) == {"model_name": "mine", "image_size": 96}


def test_a_version_1_row_loads_and_runs_as_it_did() -> None:
    """A scratch job stored by the release before versions (the settings scratch does not
    use left out, no refit_on_validation, no version): the same TrainConfig as then."""
    row = {
        "image_size": 160, "epochs": 30, "batch_size": 32, "learning_rate": 0.001,
        "augmentation": {"rotation": 0.1, "width_shift": 0.1, "height_shift": 0.1,
                         "shear": 0.1, "zoom": 0.1, "horizontal_flip": True,
                         "vertical_flip": False, "brightness": 0.0, "fill_mode": "reflect"},
        "dropout": 0.5, "early_stopping_patience": None, "class_weight": None,
        "test_time_flip": False, "seed": 7, "model_name": "pets",
    }  # fmt: skip  # a stored row, as it was written
    loaded = StoredParameters.load(row, method="scratch")
    assert loaded.version == PARAMETERS_VERSION
    assert loaded.to_train_config() == TrainConfig(
        method=config.Method.SCRATCH, image_size=160, epochs=30, batch_size=32,
        learning_rate=0.001, dropout=0.5, seed=7, refit_on_validation=False,
    )  # fmt: skip  # the defaults of that release, one line each would hide the two that matter
    assert StoredParameters.load(loaded.stored(), method="scratch") == loaded
    with pytest.raises(ValueError, match="version"):
        StoredParameters.load({**loaded.stored(), "version": 99}, method="scratch")


def test_every_training_setting_reaches_the_ml_layer() -> None:
    """Each field of TrainingParameters either is a TrainConfig field of the same name or is
    named here with where it goes: a setting added to one and not the other fails this."""
    elsewhere = {"class_weight": "balance_classes", "model_name": "the registry"}
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in TrainingParameters.model_fields:
        assert name in config_fields or name in elsewhere, name
    assert _stored(class_weight="auto").to_train_config().balance_classes


def test_the_schema_takes_its_numbers_from_the_constants() -> None:
    properties = JobCreate.model_json_schema()["properties"]
    epochs = properties["epochs"]["description"]
    assert f"{config.FINETUNE_TRY_BUDGET} / training images" in epochs
    assert f"{config.FINETUNE_MIN_EPOCHS} to {config.FINETUNE_MAX_EPOCHS}" in epochs
    assert f"({config.METHOD_DEFAULTS[config.Method.SCRATCH].epochs})" in epochs
    assert f"<= {config.REFIT_BUDGET}" in properties["refit_on_validation"]["description"]
