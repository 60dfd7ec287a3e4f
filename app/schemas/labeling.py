"""Labeling help payloads: the analysis a worker computes, suggestions and label issues."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field


class AnalysisPending(BaseModel):
    """202: the dataset version's analysis (its images' features) is being computed by a
    worker; ask again after Retry-After seconds."""

    dataset_id: uuid.UUID
    version: int
    status: str = Field(description="queued or running")
    retry_after_seconds: int
    detail: str


class ClassProbability(BaseModel):
    label: str
    probability: float


class Suggestion(BaseModel):
    """An unlabeled image worth labeling next, with what a model on the labeled images
    answers for it and why it was picked."""

    image_id: str = Field(description="the sha256 of the image's file")
    image_url: str = Field(description="a thumbnail of the image (GET, with your key)")
    predicted: list[ClassProbability] = Field(description="the likeliest classes, at most 3")
    score: float = Field(
        description="typical_diverse: the image's typicality in its group; uncertain_diverse: "
        "the margin between its two likeliest classes (small: unsure)"
    )
    reason: str


class SuggestionList(BaseModel):
    dataset_id: uuid.UUID
    version: int
    strategy: str = Field(description="typical_diverse or uncertain_diverse")
    why: str = Field(description="why this strategy, for this dataset now")
    answers_from: str | None = Field(
        description="what gave the unlabeled images' class probabilities: the request's "
        "model (name and version), or a softmax regression on the labeled images' features"
    )
    labeled: int = Field(description="labeled images the ranking learned from")
    smallest_class: int = Field(description="labeled images of the smallest class")
    unlabeled: int = Field(description="unlabeled images it ranked")
    items: list[Suggestion]


class LabelIssue(BaseModel):
    """A labeled image whose given label looks wrong."""

    image_id: str
    image_url: str
    split: str
    given_label: str
    suggested_label: str
    given_probability: float = Field(
        description="the probability a model that never saw the image gives its label "
        "(lower: more likely wrong); issues are sorted by it"
    )
    suggested_probability: float


class LabelIssueList(BaseModel):
    dataset_id: uuid.UUID
    version: int
    method: str
    checked: int = Field(description="labeled images checked")
    found: int = Field(description="images flagged (items is a page of them)")
    out_of_fold_accuracy: float = Field(
        description="how often the held-out answers agree with the given labels"
    )
    offset: int
    limit: int
    items: list[LabelIssue]
