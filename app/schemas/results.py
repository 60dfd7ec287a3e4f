"""What a finished job produced, as one typed shape: the worker writes a `JobResult` to the
job's row, the API returns it (`GET /jobs/{id}` and `/metrics`), and the console and the
client read it (tests/test_client_types.py ties the client's types to this schema)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.ml.config import Method


class ClassScores(BaseModel):
    """A class's scores; a multi-label model's label's, at its threshold, with its average
    precision."""

    precision: float
    recall: float
    f1: float
    support: int
    average_precision: float | None = Field(
        default=None, description="multi-label: the area under the label's precision-recall curve"
    )
    threshold: float | None = Field(
        default=None, description="multi-label: the label's threshold (best F1 on validation)"
    )


class PlattScores(BaseModel):
    slope: float
    intercept: float


class CalibrationReport(BaseModel):
    """How the saved model's probabilities were calibrated, and the check on held-out images."""

    method: Literal["temperature", "platt"] = Field(
        description="temperature (multiclass) or platt (per label, multi-label)"
    )
    temperature: float | None = Field(
        default=None, description="log-probabilities are divided by it (1: unchanged)"
    )
    per_label: dict[str, PlattScores] | None = Field(
        default=None, description="platt: each label's sigmoid(slope * logit(p) + intercept)"
    )
    fitted_on_images: int = Field(description="validation images the temperature was fitted on")
    bins: int = Field(description="equal-width confidence bins of the calibration error")
    split: str = Field(description="where the errors were measured: test, or validation")
    ece_before: float = Field(
        description="expected calibration error before calibration (multi-label: of every "
        "image's every label's probability)"
    )
    ece_after: float = Field(description="expected calibration error after calibration")


class OutlierReport(BaseModel):
    """The version's "unknown" answer: the score, its threshold, and what it turned away of
    images like the training images."""

    score: str = Field(description="what is compared: the distance to the k-th nearest image")
    threshold: float = Field(description="a score above it is answered unknown")
    neighbours: int
    reference_images: int = Field(description="training images the score compares with")
    calibrated_on: Literal["validation"] = Field(
        description="the images the threshold was chosen on"
    )
    negatives: int = Field(
        default=0, description="negative examples the score compares with (0: the distance alone)"
    )
    held_out_negatives: int | None = Field(
        default=None, description="negative examples of validation and test, not compared with"
    )
    held_out_negatives_rejected: float | None = Field(
        default=None, description="their share answered unknown"
    )
    calibration_images: int
    calibration_rejected: float = Field(description="their share above the threshold")
    target_rejection: float = Field(
        description="the share of new images like the training images the threshold may turn "
        "away (chosen to keep to it with 90 % confidence)"
    )
    assured: bool = Field(
        description="false: too few calibration images for that confidence (the threshold is "
        "their largest score)"
    )
    split: str | None = Field(default=None, description="where `rejected` was measured")
    rejected: float | None = Field(
        default=None, description="the share of that split's images answered unknown"
    )
    note: str | None = None


class Evaluation(BaseModel):
    """A model's answers on one split: accuracy, per-class scores, the confusion matrix; for
    a multi-label model, per-label scores and the set scores below."""

    task: Literal["multiclass", "multilabel"] | None = Field(
        default=None, description="multilabel for a multi-label model (else absent)"
    )
    accuracy: float = Field(description="multi-label: the exact-match ratio")
    samples: int
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]] = Field(
        description="rows: true class, columns: predicted (multi-label: empty)"
    )
    classes: list[str]
    mean_average_precision: float | None = Field(
        default=None, description="multi-label: the mean of the labels' average precision"
    )
    micro_f1: float | None = Field(default=None, description="multi-label: over every answer")
    macro_f1: float | None = Field(default=None, description="multi-label: the labels' mean F1")
    exact_match: float | None = Field(
        default=None, description="multi-label: the share of images with every label right"
    )
    mean_jaccard: float | None = Field(
        default=None, description="multi-label: mean |answered and true| / |answered or true|"
    )
    split: str | None = Field(default=None, description="test, or validation without a test split")
    calibration: CalibrationReport | None = None
    outliers: OutlierReport | None = None


class Candidate(BaseModel):
    """One model a run trained (or decided not to), with its scores."""

    method: Method
    settings: dict[str, Any] = Field(description="what it was trained with (method-specific)")
    validation: dict[str, float] | None = Field(
        default=None, description="accuracy (multi-label: mean_average_precision), loss"
    )
    test: dict[str, float] | None = Field(
        default=None, description="accuracy (multi-label: mean_average_precision), loss"
    )
    seconds: float = 0.0
    skipped: str | None = Field(default=None, description="why it was not trained")


class Chosen(BaseModel):
    """The model kept, and why (validation decides; the test split never does)."""

    method: Method
    reason: str


class ModelRef(BaseModel):
    """The model version a job registered."""

    name: str
    version: int
    id: uuid.UUID
    active: bool


class DatasetRef(BaseModel):
    """Which images a model learned from: every version of a dataset stays trainable."""

    id: uuid.UUID
    name: str
    version: int
    lineage_id: uuid.UUID
    fingerprint: str


class Timings(BaseModel):
    """Where a run's time went, in seconds."""

    total: float = Field(description="the training, from data loading to evaluation")
    features: float | None = Field(
        default=None, description="the frozen base's features (loaded or computed)"
    )
    saving: float = Field(description="writing the model files and its exports, registering")


class RunRuntime(BaseModel):
    """What the run ran on."""

    gpus: list[str]
    feature_extraction: str | None = Field(
        default=None, description="what ran the frozen base: onnxruntime or keras (cache hit: null)"
    )


class JobResult(BaseModel):
    """A training job's result. Results of earlier releases lack some fields: all but the
    method are optional, and a field left out is left out of the answer too."""

    # Fields a release wrote and this one does not know are kept as they are.
    model_config = ConfigDict(extra="allow")

    method: Method = Field(description="the method of the model kept")
    evaluation: Evaluation | None = None
    best_epoch: int | None = None
    model: ModelRef | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    chosen: Chosen | None = None
    warnings: list[str] = Field(default_factory=list)
    exports: dict[str, Any] = Field(
        default_factory=dict, description="each export made when the model was saved"
    )
    dataset: DatasetRef | None = None
    timings: Timings | None = None
    runtime: RunRuntime | None = None
    validation_accuracy: float | None = None
    validation_mean_average_precision: float | None = Field(
        default=None, description="multi-label: the kept model's validation mAP"
    )
    single_view_accuracy: float | None = Field(
        default=None, description="test_time_flip: the accuracy of the image alone"
    )
    feature_cache_hit: bool | None = None
    feature_cache_key: str | None = None
    feature_seconds: float | None = None
    feature_runtime: str | None = None
    weights: str | None = Field(default=None, description="the base's weights file")

    def stored(self) -> dict[str, Any]:
        """The JSON the job row keeps: only the fields this result has."""
        return self.model_dump(mode="json", exclude_unset=True)


class WorkerReport(BaseModel):
    """What a worker check (`POST /workers/check`) reports of the worker that ran it."""

    model_config = ConfigDict(extra="allow")

    python: str
    tensorflow: str
    keras: str
    keras_backend: str
    gpus: list[str]
    cpu_devices: list[str]
    pretrained_weights_dir: str | None
    pretrained_weight_files: list[str]
