"""Training a Custom Vision project: its tagged images become a dataset (a snapshot of the
project at that moment), a training job on it becomes the iteration, the job's model version
becomes the iteration's model, and publishing gives that version a name predictions use."""

from __future__ import annotations

import json
import tempfile
import uuid
import zipfile
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db.base import utcnow
from app.db.customvision import CvImage, CvImageTag, CvIteration, CvProject, CvTag
from app.db.models import JobStatus, TrainingJob
from app.ml.config import Task
from app.schemas.customvision import Iteration, Tag
from app.schemas.jobs import JobCreate
from app.services import jobs
from app.services.auth import Principal
from app.services.customvision.domains import BY_ID, EXPORT_PLATFORMS
from app.services.customvision.errors import CustomVisionError, not_found
from app.services.customvision.images import image_key
from app.services.customvision.projects import list_tags, parse_id, tag_wire
from app.services.datasets import IngestOptions, ingest_zip
from app.services.storage import get_storage

# Images each tag needs to train on (Azure asks for at least 5 per tag).
MIN_IMAGES_PER_TAG = 5
TRAINING_TYPES = ("Regular", "Advanced")
_STATUS = {
    JobStatus.QUEUED.value: "Training",
    JobStatus.RUNNING.value: "Training",
    JobStatus.SUCCEEDED.value: "Completed",
    JobStatus.FAILED.value: "Failed",
    JobStatus.CANCELLED.value: "Failed",
}


def model_name(project: CvProject) -> str:
    """The models-store name of a project's iterations' model versions."""
    return model_name_of(str(project.id))


def model_name_of(project_id: str) -> str:
    return f"customvision-{project_id}"


def _tagged(session: Session, project: CvProject) -> dict[uuid.UUID, list[CvTag]]:
    rows = session.execute(
        select(CvImageTag.image_id, CvTag)
        .join(CvTag, CvTag.id == CvImageTag.tag_id)
        .where(CvTag.project_id == project.id)
    )
    tagged: dict[uuid.UUID, list[CvTag]] = {}
    for image_id, tag in rows:
        tagged.setdefault(image_id, []).append(tag)
    return tagged


def _check_trainable(project: CvProject, tagged: dict[uuid.UUID, list[CvTag]]) -> None:
    counts = Counter(t.name for tags in tagged.values() for t in tags if t.type == "Regular")
    if len(counts) < 2:
        raise CustomVisionError(
            "BadRequestTrainingValidationFailed",
            f"the project has tagged images of {len(counts)} tag(s); training needs at least "
            "2 tags with images",
        )
    if few := sorted(name for name, count in counts.items() if count < MIN_IMAGES_PER_TAG):
        raise CustomVisionError(
            "BadRequestTrainingValidationFailed",
            f"tag(s) {', '.join(few[:5])} have fewer than {MIN_IMAGES_PER_TAG} images",
        )
    if project.classification_type == "Multiclass":
        several = [i for i, tags in tagged.items() if sum(t.type == "Regular" for t in tags) > 1]
        if several:
            raise CustomVisionError(
                "BadRequestMultiClassClassificationTrainingValidationFailed",
                f"{len(several)} image(s) have more than one tag, as a Multiclass project's "
                f"images may not (image {several[0]}): make the project Multilabel",
            )


def _snapshot(
    session: Session,
    *,
    project: CvProject,
    tagged: dict[uuid.UUID, list[CvTag]],
    settings: Settings,
    principal: Principal,
    number: int,
) -> uuid.UUID:
    """The project's tagged images as a new dataset (a zip with labels.jsonl, ingested as an
    upload is): its id. Images of the Negative tag have no label: negative examples."""
    images = list(
        session.scalars(select(CvImage).where(CvImage.id.in_(list(tagged))).order_by(CvImage.id))
    )
    store = get_storage().projects
    with tempfile.TemporaryDirectory(prefix="customvision-", dir=settings.data_dir) as tmp:
        archive = Path(tmp) / "project.zip"
        lines = []
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
            for image in images:
                name = f"images/{image.sha256}"
                zipped.writestr(name, store.get_bytes(image_key(project.id, image.sha256)))
                labels = sorted(t.name for t in tagged[image.id] if t.type == "Regular")
                lines.append(json.dumps({"path": name, "labels": labels}))
            zipped.writestr("labels.jsonl", "\n".join(lines) + "\n")
        multilabel = project.classification_type == "Multilabel"
        dataset = ingest_zip(
            session,
            zip_path=archive,
            options=IngestOptions(
                name=f"{project.name} (Custom Vision iteration {number})",
                validation_fraction=0.2,
                test_fraction=0.1,
                seed=1337,
                owner=principal.owner,
                task=Task.MULTILABEL if multilabel else Task.MULTICLASS,
            ),
            settings=settings,
        )
    return dataset.id


def train_project(
    session: Session,
    *,
    project: CvProject,
    principal: Principal,
    settings: Settings,
    training_type: str | None,
    reserved_budget_in_hours: int,
    force_train: bool,
) -> CvIteration:
    """A new iteration: the project's tagged images snapshotted and a training job (`auto`,
    the default request) started on them."""
    kind = next(
        (t for t in TRAINING_TYPES if t.lower() == (training_type or "Regular").lower()), None
    )
    if kind is None:
        raise CustomVisionError("BadRequest", "trainingType is Regular or Advanced")
    if not 0 <= reserved_budget_in_hours <= 24 * 7:
        raise CustomVisionError("BadRequest", "reservedBudgetInHours is 0 to 168")
    iterations = list_iterations(session, project=project)
    if any(_status(session, i) == "Training" for i in iterations):
        raise CustomVisionError(
            "BadRequestTrainingAlreadyInProgress", "an iteration of this project is training"
        )
    trained = [i for i in iterations if _status(session, i) == "Completed"]
    if trained and not force_train and trained[-1].created_at >= project.last_modified_at:
        raise CustomVisionError(
            "BadRequestTrainingNotNeeded",
            "nothing changed since the last iteration was trained (forceTrain=true trains again)",
        )
    tagged = _tagged(session, project)
    _check_trainable(project, tagged)
    counts = Counter(t.id for tags in tagged.values() for t in tags)
    trained_tags = [
        {
            "id": str(t.id),
            "name": t.name,
            "description": t.description,
            "type": t.type,
            "image_count": counts.get(t.id, 0),
        }
        for t in list_tags(session, project=project)
    ]
    number = len(iterations) + 1
    dataset_id = _snapshot(
        session,
        project=project,
        tagged=tagged,
        settings=settings,
        principal=principal,
        number=number,
    )
    domain = BY_ID[project.domain_id]
    request = JobCreate.model_validate(
        {
            "dataset_id": dataset_id,
            "model_name": model_name(project),
            "base_model": domain.base_model,
        }
    )
    job = jobs.submit_training_job(session, request=request, principal=principal, settings=settings)
    iteration = CvIteration(
        project_id=project.id,
        name=f"Iteration {number}",
        job_id=job.id,
        dataset_id=dataset_id,
        training_type=kind,
        reserved_budget_in_hours=reserved_budget_in_hours,
        domain_id=project.domain_id,
        classification_type=project.classification_type,
        settings={"tags": trained_tags},
    )
    session.add(iteration)
    session.flush()
    return iteration


def trained_tags(session: Session, *, project: CvProject, iteration: CvIteration) -> list[Tag]:
    """The project's tags as the iteration trained on them, with their image counts then
    (an iteration that recorded none, from before they were recorded: today's tags)."""
    recorded = iteration.settings.get("tags")
    if isinstance(recorded, list):
        return [Tag.model_validate(tag) for tag in recorded]
    tags = list_tags(session, project=project)
    return [tag_wire(tag, 0) for tag in tags]


def list_iterations(session: Session, *, project: CvProject) -> list[CvIteration]:
    query = select(CvIteration).where(CvIteration.project_id == project.id)
    return list(session.scalars(query.order_by(CvIteration.created_at)))


def get_iteration(session: Session, *, project: CvProject, iteration_id: str) -> CvIteration:
    parsed = parse_id(iteration_id, code="BadRequestInvalidIds", what="iteration id")
    iteration = session.get(CvIteration, parsed)
    if iteration is None or iteration.project_id != project.id:
        raise not_found("NotFoundIteration", f"no iteration {parsed} in project {project.id}")
    return iteration


def _job(session: Session, iteration: CvIteration) -> TrainingJob | None:
    return None if iteration.job_id is None else session.get(TrainingJob, iteration.job_id)


def _status(session: Session, iteration: CvIteration) -> str:
    job = _job(session, iteration)
    if job is None:
        return str(iteration.settings.get("status", "Failed"))
    return _STATUS.get(job.status, "Training")


def model_version(session: Session, iteration: CvIteration) -> int | None:
    """The model version the iteration's job registered (None until it has)."""
    job = _job(session, iteration)
    model = ((job.result or {}).get("model") or {}) if job is not None else {}
    version = model.get("version")
    return int(version) if isinstance(version, int) else None


def iteration_wire(session: Session, iteration: CvIteration) -> Iteration:
    job = _job(session, iteration)
    status = _status(session, iteration)
    minutes = 0
    if job is not None and job.started_at and job.finished_at:
        minutes = max(1, round((job.finished_at - job.started_at).total_seconds() / 60))
    return Iteration(
        id=str(iteration.id),
        name=iteration.name,
        status=status,
        created=iteration.created_at,
        last_modified=iteration.last_modified_at,
        trained_at=job.finished_at if job is not None and status == "Completed" else None,
        project_id=str(iteration.project_id),
        exportable=BY_ID[iteration.domain_id].compact,
        exportable_to=list(EXPORT_PLATFORMS) if BY_ID[iteration.domain_id].compact else [],
        domain_id=str(iteration.domain_id),
        classification_type=iteration.classification_type,
        training_type=iteration.training_type,
        reserved_budget_in_hours=iteration.reserved_budget_in_hours,
        training_time_in_minutes=minutes,
        publish_name=iteration.publish_name,
        original_publish_resource_id=iteration.prediction_resource_id,
        training_error_details=(job.error if job is not None and status == "Failed" else None),
    )


def rename(session: Session, *, iteration: CvIteration, name: str) -> None:
    if not name.strip():
        raise CustomVisionError("BadRequestIterationName", "an iteration name is not empty")
    iteration.name = name.strip()
    iteration.last_modified_at = utcnow()
    session.flush()


def delete_iteration(session: Session, *, iteration: CvIteration) -> None:
    if iteration.publish_name is not None:
        raise CustomVisionError(
            "BadRequestIterationIsPublished", "unpublish the iteration before deleting it"
        )
    session.delete(iteration)
    session.flush()


def publish(
    session: Session,
    *,
    project: CvProject,
    iteration: CvIteration,
    publish_name: str | None,
    prediction_id: str | None,
    overwrite: bool,
) -> None:
    """Give the trained iteration a name prediction calls use (unique in the project)."""
    name = (publish_name or "").strip()
    if not name or len(name) > 200 or "/" in name:
        raise CustomVisionError(
            "BadRequestInvalidPublishName", "a publish name has 1 to 200 characters, no '/'"
        )
    if _status(session, iteration) != "Completed" or model_version(session, iteration) is None:
        raise CustomVisionError(
            "BadRequestIterationIsNotTrained", f"iteration {iteration.id} is not trained"
        )
    holder = session.scalar(
        select(CvIteration).where(
            CvIteration.project_id == project.id, CvIteration.publish_name == name
        )
    )
    if holder is not None and holder.id != iteration.id:
        if not overwrite:
            raise CustomVisionError(
                "BadRequestInvalidPublishName",
                f"{name!r} is the publish name of {holder.name}: unpublish it, or overwrite",
            )
        holder.publish_name = None
        session.flush()
    iteration.publish_name = name
    iteration.prediction_resource_id = prediction_id
    iteration.last_modified_at = utcnow()
    session.flush()


def unpublish(session: Session, *, iteration: CvIteration) -> None:
    if iteration.publish_name is None:
        raise CustomVisionError(
            "BadRequestIterationNotPublished", f"iteration {iteration.id} is not published"
        )
    iteration.publish_name = None
    iteration.prediction_resource_id = None
    iteration.last_modified_at = utcnow()
    session.flush()


def published(session: Session, *, project: CvProject, publish_name: str) -> CvIteration:
    """The iteration published under `publish_name` (NotFound for none)."""
    iteration = session.scalar(
        select(CvIteration).where(
            CvIteration.project_id == project.id, CvIteration.publish_name == publish_name
        )
    )
    if iteration is None:
        raise not_found(
            "NotFoundIteration",
            f"no iteration of project {project.id} is published as {publish_name!r}",
        )
    return iteration


def latest_trained(session: Session, *, project: CvProject) -> CvIteration:
    """The project's newest trained iteration (a quick test without an iterationId uses it)."""
    trained = [
        i
        for i in list_iterations(session, project=project)
        if model_version(session, i) is not None
    ]
    if not trained:
        raise not_found("NotFoundProjectDefaultIteration", "the project has no trained iteration")
    return trained[-1]
