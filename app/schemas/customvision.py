"""The Azure Custom Vision API's wire shapes (camelCase keys, as its SDKs read and write them):
the Training API's domains, projects and tags."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ClassificationType = Literal["Multiclass", "Multilabel"]
TagType = Literal["Regular", "Negative"]
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown keys are ignored, as Azure does."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Domain(_Wire):
    id: str
    name: str
    type: Literal["Classification", "ObjectDetection"]
    exportable: bool
    enabled: bool
    exportable_platforms: list[str] = Field(default_factory=list)


class ProjectSettings(_Wire):
    domain_id: str | None = None
    classification_type: ClassificationType | None = None
    target_export_platforms: list[str] = Field(default_factory=list)
    use_negative_set: bool = True


class Project(_Wire):
    id: str
    name: str
    description: str
    settings: ProjectSettings
    created: datetime
    last_modified: datetime
    thumbnail_uri: str | None = None
    dr_mode_enabled: bool = False
    status: str = "Succeeded"


class ProjectUpdate(_Wire):
    """PATCH /projects/{id}: the SDK sends the whole Project; a missing part stays as it is."""

    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    settings: ProjectSettings | None = None


class Tag(_Wire):
    id: str
    name: str
    description: str
    type: TagType
    image_count: int


class TagUpdate(_Wire):
    """PATCH /projects/{id}/tags/{tag}: name, description and type (what is sent changes)."""

    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    type: TagType | None = None


class ImageTag(_Wire):
    tag_id: str
    tag_name: str
    created: datetime


class Image(_Wire):
    id: str
    created: datetime
    width: int
    height: int
    resized_image_uri: str
    thumbnail_uri: str
    original_image_uri: str
    tags: list[ImageTag] | None = None
    regions: list[dict[str, object]] | None = None
    metadata: dict[str, str] | None = None


ImageCreateStatus = Literal[
    "OK",
    "OKDuplicate",
    "ErrorSource",
    "ErrorImageFormat",
    "ErrorImageSize",
    "ErrorStorage",
    "ErrorLimitExceed",
    "ErrorTagLimitExceed",
    "ErrorRegionLimitExceed",
    "ErrorUnknown",
    "ErrorNegativeAndRegularTagOnSameImage",
    "ErrorImageDimensions",
]


class ImageCreateResult(_Wire):
    source_url: str | None = None
    status: ImageCreateStatus
    image: Image | None = None


class ImageCreateSummary(_Wire):
    is_batch_successful: bool
    images: list[ImageCreateResult]


# At most this many images per create call (Azure's), and per page of a listing.
MAX_IMAGES_PER_BATCH = 64
MAX_IMAGES_PER_PAGE = 256


class ImageFileCreateEntry(_Wire):
    name: str | None = Field(default=None, max_length=1000)
    contents: str | None = Field(default=None, description="the image file, base64")
    tag_ids: list[str] | None = Field(default=None, max_length=100)
    regions: list[dict[str, object]] | None = Field(default=None, max_length=0)


class ImageFileCreateBatch(_Wire):
    images: list[ImageFileCreateEntry] = Field(default_factory=list)
    tag_ids: list[str] | None = Field(default=None, max_length=100)
    metadata: dict[str, str] | None = None


class ImageTagCreateEntry(_Wire):
    image_id: str
    tag_id: str


class ImageTagCreateBatch(_Wire):
    tags: list[ImageTagCreateEntry] = Field(
        default_factory=list, max_length=MAX_IMAGES_PER_BATCH * 100
    )


class ImageTagCreateSummary(_Wire):
    created: list[ImageTagCreateEntry] = Field(default_factory=list)
    duplicated: list[ImageTagCreateEntry] = Field(default_factory=list)
    exceeded: list[ImageTagCreateEntry] = Field(default_factory=list)


class Iteration(_Wire):
    id: str
    name: str
    status: str  # Training, Completed or Failed
    created: datetime
    last_modified: datetime
    trained_at: datetime | None = None
    project_id: str
    exportable: bool
    exportable_to: list[str] = Field(default_factory=list)
    domain_id: str | None = None
    classification_type: ClassificationType | None = None
    training_type: Literal["Regular", "Advanced"] = "Regular"
    reserved_budget_in_hours: int = 0
    training_time_in_minutes: int = 0
    publish_name: str | None = None
    original_publish_resource_id: str | None = None
    training_error_details: str | None = None


class IterationUpdate(_Wire):
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)


class Prediction(_Wire):
    probability: float
    tag_id: str
    tag_name: str
    tag_type: Literal["Regular", "Negative"] = "Regular"


class ClassifiedImage(_Wire):
    id: str
    project: str
    iteration: str
    created: datetime
    predictions: list[Prediction]


class TagPerformance(_Wire):
    id: str
    name: str
    precision: float
    precision_std_deviation: float
    recall: float
    recall_std_deviation: float
    average_precision: float


class IterationPerformance(_Wire):
    per_tag_performance: list[TagPerformance]
    precision: float
    precision_std_deviation: float
    recall: float
    recall_std_deviation: float
    average_precision: float


class ImagePerformance(_Wire):
    """One held-out image of an iteration's training: its tags then and the model's answer."""

    id: str
    created: datetime
    width: int
    height: int
    image_uri: str
    thumbnail_uri: str
    tags: list[ImageTag]
    predictions: list[Prediction]


class CustomVisionErrorBody(BaseModel):
    """Custom Vision's error: what its SDKs raise CustomVisionErrorException from."""

    code: str = Field(
        description="Custom Vision's code, e.g. NotFoundProject, BadRequestImageFormat"
    )
    message: str


def _error(description: str) -> dict[str, object]:
    return {"model": CustomVisionErrorBody, "description": description}


# The errors every Custom Vision route may answer, in its shape (this service's other routes
# answer {"error", "detail"}).
CUSTOM_VISION_RESPONSES: dict[int | str, dict[str, object]] = {
    400: _error("a bad request (the code says what), or a field that does not validate"),
    401: _error("Unauthorized: no key, or an invalid or revoked one"),
    403: _error("Forbidden: the key lacks the scope (train or predict)"),
    404: _error("no such project, tag, image, iteration or API version"),
    413: _error("an image or the request is over a limit"),
    415: _error("not an image"),
    422: _error("(never: validation errors are answered 400)"),
    429: _error("over the key's rate"),
    503: _error("the database or the broker is unreachable"),
}


class Export(_Wire):
    platform: str
    status: Literal["Exporting", "Failed", "Done"]
    download_uri: str | None = None
    flavor: str | None = None
    newer_version_available: bool = False


class PredictionQueryTag(_Wire):
    id: str
    min_threshold: float = 0.0
    max_threshold: float = 1.0


class PredictionQueryToken(_Wire):
    session: str | None = None
    continuation: str | None = Field(default=None, max_length=40)
    max_count: int = 50
    order_by: Literal["Newest", "Oldest", "Suggested"] = "Newest"
    tags: list[PredictionQueryTag] | None = Field(default=None, max_length=500)
    iteration_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    application: str | None = None


class StoredImagePrediction(_Wire):
    resized_image_uri: str
    thumbnail_uri: str
    original_image_uri: str
    domain: str
    id: str
    project: str
    iteration: str
    created: datetime
    predictions: list[Prediction]


class PredictionQueryResult(_Wire):
    token: PredictionQueryToken
    results: list[StoredImagePrediction]


class ImageIdCreateEntry(_Wire):
    id: str
    tag_ids: list[str] | None = Field(default=None, max_length=100)
    regions: list[dict[str, object]] | None = Field(default=None, max_length=0)


class ImageIdCreateBatch(_Wire):
    images: list[ImageIdCreateEntry] = Field(default_factory=list)
    tag_ids: list[str] | None = Field(default=None, max_length=100)
    metadata: dict[str, str] | None = None


class ImageUrl(_Wire):
    url: str = Field(max_length=2048)


class ImageUrlCreateEntry(_Wire):
    url: str = Field(max_length=2048)
    tag_ids: list[str] | None = Field(default=None, max_length=100)
    regions: list[dict[str, object]] | None = Field(default=None, max_length=0)


class ImageUrlCreateBatch(_Wire):
    images: list[ImageUrlCreateEntry] = Field(default_factory=list)
    tag_ids: list[str] | None = Field(default=None, max_length=100)
    metadata: dict[str, str] | None = None
