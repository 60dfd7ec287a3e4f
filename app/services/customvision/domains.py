"""Custom Vision's domains, by Azure's well-known ids, each trained here by a base model: every
classification domain by MobileNetV2 (this service's default and best-measured base); the
compact ones are exportable (to ONNX, and to TensorFlow as a SavedModel or TensorFlow Lite).
Object detection domains are listed, as Azure lists them, and refused for projects (this
service classifies images)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.schemas.customvision import Domain
from app.services.customvision.errors import CustomVisionError, not_found

# What an exportable domain's iterations can be exported to, here.
EXPORT_PLATFORMS = ["ONNX", "TensorFlow", "DockerFile"]


@dataclass(frozen=True)
class DomainSpec:
    id: uuid.UUID
    name: str
    type: str  # Classification or ObjectDetection
    compact: bool
    base_model: str = "mobilenet_v2"

    def wire(self) -> Domain:
        return Domain(
            id=str(self.id),
            name=self.name,
            type="Classification" if self.type == "Classification" else "ObjectDetection",
            exportable=self.compact,
            enabled=True,
            exportable_platforms=EXPORT_PLATFORMS if self.compact else [],
        )


def _spec(
    id_: str, name: str, kind: str = "Classification", *, compact: bool = False
) -> DomainSpec:
    return DomainSpec(id=uuid.UUID(id_), name=name, type=kind, compact=compact)


DOMAINS = (
    _spec("ee85a74c-405e-4adc-bb47-ffa8ca0c9f31", "General"),
    _spec("a8e3c40f-fb4a-466f-832a-5e457ae4a344", "General [A1]"),
    _spec("2e37d7fb-3a54-486a-b4d6-cfc369af0018", "General [A2]"),
    _spec("c151d5b5-dd07-472a-acc8-15d29dea8518", "Food"),
    _spec("ca455789-012d-4b50-9fec-5bb63841c793", "Landmarks"),
    _spec("b30a91ae-e3c1-4f73-a81e-c270bff27c39", "Retail"),
    _spec("0732100f-1a38-4e49-a514-c9b44c697ab5", "General (compact)", compact=True),
    _spec("a1db07ca-a19a-4830-bae8-e004a42dc863", "General (compact) [S1]", compact=True),
    _spec("8882951b-82cd-4c32-970b-d5f8cb8bf6d7", "Food (compact)", compact=True),
    _spec("b5cfd229-2ac7-4b2b-8d0a-2b0661344894", "Landmarks (compact)", compact=True),
    _spec("6b4faeda-8396-481b-9f8b-177b9fa3097f", "Retail (compact)", compact=True),
    _spec("da2e3a8a-40a5-4171-82f4-58522f70fbc1", "General", "ObjectDetection"),
    _spec("1d8ffafe-ec40-4fb2-8f90-72b3b6cecea4", "Logo", "ObjectDetection"),
    _spec("3780a898-81c3-4516-81ae-3a139614e1f3", "Products on Shelves", "ObjectDetection"),
    _spec(
        "a27d5ca5-bb19-49d8-a70a-fec086c47f5b", "General (compact)", "ObjectDetection", compact=True
    ),
    _spec(
        "7ec2ac80-887b-48a6-8df9-8b1357765430",
        "General (compact) [S1]",
        "ObjectDetection",
        compact=True,
    ),
)
BY_ID = {domain.id: domain for domain in DOMAINS}
DEFAULT_DOMAIN = DOMAINS[0]  # General: what a project gets without a domainId


def get_domain(domain_id: uuid.UUID) -> DomainSpec:
    if (domain := BY_ID.get(domain_id)) is None:
        raise not_found("NotFoundDomain", f"no domain {domain_id}")
    return domain


def classification_domain(domain_id: uuid.UUID | None) -> DomainSpec:
    """The domain a project may train in: a classification one (object detection is refused
    with BadRequestNotSupported: this service classifies whole images)."""
    if domain_id is None:
        return DEFAULT_DOMAIN
    domain = BY_ID.get(domain_id)
    if domain is None:
        raise CustomVisionError(
            "BadRequestProjectUnknownDomain", f"no domain {domain_id}: GET /domains lists them"
        )
    if domain.type != "Classification":
        raise CustomVisionError(
            "BadRequestNotSupported",
            f"domain {domain.name!r} is for object detection, which this service does not "
            "do: use a classification domain",
        )
    return domain
