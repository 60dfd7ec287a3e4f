"""Dataset payloads: the upload form and what the API shows of a dataset."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.ml.config import Task
from app.ml.data import NEGATIVE_LABEL
from app.schemas.text import Text


class DatasetUploadForm(BaseModel):
    """The text fields of `POST /datasets` beside the zip `file`."""

    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200)
    validation_fraction: float = Field(
        default=0.2,
        ge=0.0,
        le=0.5,
        description="share of each class held out for validation when the zip has no split folders",
    )
    test_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="share of each class held out for testing when the zip has no split folders",
    )
    seed: int = Field(default=1337, ge=0, le=2**31 - 1, description="seed of the split")
    negative_folder: Text = Field(
        default=NEGATIVE_LABEL,
        min_length=1,
        max_length=200,
        description="the class-level folder whose images are negative examples: of none of "
        "the classes (the model's unknown answer learns from them); in labels.csv / "
        "labels.jsonl, a line with no label is one",
    )
    task: Task | None = Field(
        default=None,
        description="multiclass (one label per image) or multilabel (any number); default: "
        "multilabel where labels.csv / labels.jsonl gives an image several labels",
    )


class _VersionSplitOptions(BaseModel):
    """How a new version splits the images that come without split folders (review items,
    a zip of class folders), which of its parent's images it leaves out, and which version it
    is made from."""

    validation_fraction: float = Field(
        default=0.2,
        ge=0.0,
        le=0.5,
        description="share of each class's new images held out for validation",
    )
    test_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="share of each class's new images held out for testing",
    )
    seed: int = Field(default=1337, ge=0, le=2**31 - 1, description="seed of the split")
    parent_version: int | None = Field(
        default=None,
        ge=1,
        le=2_147_483_647,
        description="the version to build on; default: the latest",
    )


class DatasetVersionForm(_VersionSplitOptions):
    """The text fields of `POST /datasets/{id}/versions` beside the optional zip `file`."""

    model_config = ConfigDict(extra="forbid")

    remove: str = Field(
        default="",
        max_length=60_000,
        description="sha256 of images to leave out, separated by commas or spaces",
    )

    def remove_set(self) -> frozenset[str]:
        return frozenset(part for part in self.remove.replace(",", " ").split() if part)


class DatasetVersionFromReview(_VersionSplitOptions):
    """`POST /datasets/{id}/versions/from-review`: the caller's labeled review items (of one
    model, or these ids) become images of the dataset's next version."""

    model_config = ConfigDict(extra="forbid")

    model: Text | None = Field(default=None, max_length=200, description="only this model's items")
    item_ids: list[uuid.UUID] | None = Field(
        default=None, max_length=10_000, description="these items (default: every labeled one)"
    )
    remove: list[str] = Field(
        default_factory=list, max_length=10_000, description="sha256 of images to leave out"
    )


# An image's id in a dataset: the sha256 of its file.
ImageId = Annotated[str, Field(pattern="^[0-9a-f]{64}$", description="the sha256 of the file")]
# Images one labeling request may name (a dataset's own cap bounds them further).
MAX_LABELS_PER_REQUEST = 10_000


class ImageLabels(BaseModel):
    """The labels one image of the dataset gets: its class (`label`, multiclass) or its
    labels (`labels`, multi-label; [] for a negative example)."""

    model_config = ConfigDict(extra="forbid")

    image_id: ImageId
    label: Text | None = Field(default=None, min_length=1, max_length=200)
    labels: list[Annotated[Text, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=1_000
    )

    @model_validator(mode="after")
    def _one_of_them(self) -> ImageLabels:
        if (self.label is None) == (self.labels is None):
            raise ValueError("give either label (one class) or labels (a list)")
        return self

    def given(self) -> tuple[str, ...]:
        return (self.label,) if self.label is not None else tuple(sorted(set(self.labels or [])))


class DatasetLabels(_VersionSplitOptions):
    """`POST /datasets/{id}/labels`: labels for images of the dataset (unlabeled ones, such
    as the suggestions; or labeled ones whose label was wrong) and images to leave out, in
    one new version, made whole or not at all."""

    model_config = ConfigDict(extra="forbid")

    labels: list[ImageLabels] = Field(default_factory=list, max_length=MAX_LABELS_PER_REQUEST)
    remove: list[ImageId] = Field(
        default_factory=list,
        max_length=MAX_LABELS_PER_REQUEST,
        description="images to leave out (labeled or not)",
    )

    @model_validator(mode="after")
    def _each_image_once(self) -> DatasetLabels:
        named = [entry.image_id for entry in self.labels]
        if len(set(named)) != len(named):
            raise ValueError("an image is labeled twice in one request")
        if not self.labels and not self.remove:
            raise ValueError("nothing to change: give labels and/or remove")
        return self


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    # Versions: the id of the first version, this one's number and the version it was made
    # from, and what changed (images added and removed per class and split; null for v1).
    lineage_id: uuid.UUID
    version: int
    parent_id: uuid.UUID | None
    diff: dict[str, Any] | None
    fingerprint: str | None
    status: str
    class_names: list[str]
    task: Task = Field(description="multiclass: one class per image; multilabel: any number")
    split_counts: dict[str, dict[str, int]]
    stats: dict[str, Any]
    created_at: datetime
