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
