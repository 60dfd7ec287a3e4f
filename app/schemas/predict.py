"""`POST /predict`: what a client sends and gets back."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.models import MAX_VERSION_NUMBER, Precision
from app.schemas.text import Text

MAX_TOP_K = 1000


class PredictOptions(BaseModel):
    """Which model answers and how many labels each image gets (form fields or JSON)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: Text | None = Field(
        default=None, max_length=200, description="model name; default: the only active model"
    )
    version: int | None = Field(
        default=None, ge=1, le=MAX_VERSION_NUMBER, description="default: the active version"
    )
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K, description="labels per image")
    precision: Precision | None = Field(
        default=None,
        description="float32: the version's own model; int8: its int8 ONNX export (only once "
        "that export passed its accuracy check; 409 otherwise); default: the version's "
        "serving_precision",
    )
    explain: bool = Field(
        default=False,
        description="also return a Grad-CAM heatmap of each image for its top label (one more "
        "forward and backward pass per image)",
    )
    detect_unknown: bool = Field(
        default=True,
        description='answer "unknown" for an image unlike every training image (versions '
        "trained since the answer exists; false: only the labels)",
    )
    outlier_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=2.0,
        description="the outlier score above which an image is unknown; default: the "
        "version's own, chosen on its validation images (its job's evaluation.outliers)",
    )
    label_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="multi-label models: the probability every label must reach to pass; "
        "default: each label's own threshold, chosen on the version's validation images "
        "(GET /models/{name}/versions/{v}: metrics_summary.thresholds)",
    )


class Base64Image(BaseModel):
    model_config = ConfigDict(extra="forbid")

    b64: str = Field(description="the image file (JPEG, PNG, ...), base64-encoded")
    filename: Text | None = Field(default=None, max_length=1000)


class PredictJSONRequest(PredictOptions):
    images: list[Base64Image] = Field(min_length=1)


class LabelProbability(BaseModel):
    label: str
    probability: float
    threshold: float | None = Field(
        default=None, description="multi-label models: the label's threshold (else absent)"
    )
    above_threshold: bool | None = Field(
        default=None, description="multi-label models: the probability reaches it"
    )


class Explanation(BaseModel):
    id: str
    label: str = Field(description="the label explained: the top one")
    probability: float
    url: str = Field(description="the overlay as a PNG image (GET, same key)")
    png_base64: str = Field(description="the image with the Grad-CAM heatmap over it, PNG")


class ImagePrediction(BaseModel):
    filename: str | None
    labels: list[LabelProbability] = Field(
        description="most likely first: the top_k of a multiclass model, every label of a "
        "multi-label one"
    )
    labels_above_threshold: list[str] | None = Field(
        default=None,
        description="multi-label models: the labels that pass their thresholds, most likely "
        "first (empty: none of them); absent for a multiclass model",
    )
    unknown: bool = Field(
        default=False,
        description="the image is unlike every training image: none of the labels is its "
        "answer (they are still listed)",
    )
    outlier_score: float | None = Field(
        default=None,
        description="how unlike the training images the image is (cosine distance to its 5th "
        "nearest); null where the version has no unknown answer or it was turned off",
    )
    explanation: Explanation | None = Field(default=None, description="with explain=true")


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    version: int
    predictions: list[ImagePrediction]
    outlier_threshold: float | None = Field(
        default=None, description="the threshold applied; null: no unknown answers"
    )
    task: str | None = Field(
        default=None, description="multilabel for a multi-label model; absent otherwise"
    )
    seconds: float = Field(description="time spent in the service: decoding and inference")
    runtime: str = Field(
        description="what ran the model: onnxruntime, keras, or onnxruntime_int8 (the int8 "
        "ONNX export)"
    )
