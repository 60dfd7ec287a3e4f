"""`POST /predict`: what a client sends and gets back."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.models import MAX_VERSION_NUMBER
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


class Base64Image(BaseModel):
    model_config = ConfigDict(extra="forbid")

    b64: str = Field(description="the image file (JPEG, PNG, ...), base64-encoded")
    filename: Text | None = Field(default=None, max_length=1000)


class PredictJSONRequest(PredictOptions):
    images: list[Base64Image] = Field(min_length=1)


class LabelProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    filename: str | None
    labels: list[LabelProbability] = Field(description="most likely first")


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    version: int
    predictions: list[ImagePrediction]
    seconds: float = Field(description="time spent in the service: decoding and inference")
    runtime: str = Field(description="what ran the model: onnxruntime or keras")
