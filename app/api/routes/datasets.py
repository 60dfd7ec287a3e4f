"""Datasets: upload a labeled zip, list, inspect, preview and delete."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from app.api.bodies import (
    MultipartUpload,
    json_body_openapi,
    multipart_body_openapi,
    read_json_model,
    receive_multipart,
    validate_form,
)
from app.api.deps import MAX_OFFSET, SessionDep, Trainer, ValidDataset
from app.core.config import get_settings
from app.core.errors import BadRequestError
from app.schemas.datasets import (
    DatasetRead,
    DatasetUploadForm,
    DatasetVersionForm,
    DatasetVersionFromReview,
)
from app.services import datasets, previews, review

router = APIRouter(prefix="/datasets", tags=["datasets"])

_UPLOAD_SCHEMA = multipart_body_openapi(
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "zip of class folders, or of train/ validation/ "
            "(val/) [test/] folders each holding class folders",
        }
    },
    DatasetUploadForm,
    required=["file", "name"],
)


async def _receive_zip(request: Request) -> MultipartUpload:
    """The form's text fields, and its `file` part (a zip) streamed to disk under the limit."""
    settings = get_settings()
    return await receive_multipart(
        request,
        file_field="file",
        dest_dir=settings.datasets_dir / ".uploads",
        max_file_bytes=settings.max_upload_bytes,
    )


@router.post(
    "",
    response_model=DatasetRead,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_UPLOAD_SCHEMA,
    responses={
        400: {"description": "bad archive or layout"},
        413: {"description": "upload or archive over a limit"},
        415: {"description": "not a zip / not multipart"},
    },
)
async def upload_dataset(request: Request, session: SessionDep, principal: Trainer) -> DatasetRead:
    """Upload a zip of labeled images. Every file is decoded and checked; the response lists
    classes, per-split counts, image sizes, skipped files with reasons, duplicates and warnings."""
    settings = get_settings()
    upload = await _receive_zip(request)
    try:
        if upload.file_path is None:
            raise BadRequestError("the form has no `file` part with the zip")
        form = validate_form(DatasetUploadForm, upload.fields)
        options = datasets.IngestOptions(
            name=form.name,
            validation_fraction=form.validation_fraction,
            test_fraction=form.test_fraction,
            seed=form.seed,
            negative_folder=form.negative_folder,
            owner=principal.owner,
            task=form.task,
        )
        dataset = await run_in_threadpool(
            datasets.ingest_zip,
            session,
            zip_path=upload.file_path,
            options=options,
            settings=settings,
        )
    finally:
        upload.discard()
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=list[DatasetRead])
def list_datasets(
    session: SessionDep,
    principal: Trainer,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[DatasetRead]:
    """Datasets, newest first."""
    return [
        DatasetRead.model_validate(d)
        for d in datasets.list_datasets(session, principal=principal, limit=limit, offset=offset)
    ]


@router.get("/{dataset_id}", response_model=DatasetRead)
def read_dataset(dataset: ValidDataset) -> DatasetRead:
    """One dataset with its classes, counts and ingest report."""
    return DatasetRead.model_validate(dataset)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"description": "a job on the dataset is queued or running"}},
)
def delete_dataset(dataset: ValidDataset, session: SessionDep) -> Response:
    """Delete the dataset's rows and image files (409 while a job uses it)."""
    datasets.delete_dataset(session, dataset=dataset)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{dataset_id}/preview.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def preview_dataset(
    dataset: ValidDataset,
    per_class: Annotated[int, Query(ge=1, le=12)] = 6,
) -> Response:
    """A grid of a few training images per class, labeled, for people to eyeball the data."""
    png = previews.dataset_preview_png(dataset, settings=get_settings(), per_class=per_class)
    return Response(content=png, media_type="image/png")


_VERSION_SCHEMA = multipart_body_openapi(
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "optional zip of class folders (or of split folders "
            "holding them) with the images to add",
        }
    },
    DatasetVersionForm,
)

_VERSION_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad archive, nothing would change, or unknown images to remove"},
    404: {"description": "no such dataset or version (or not yours)"},
    409: {"description": "another version was added meanwhile, or review items changed"},
    413: {"description": "upload or the new version over a limit"},
    415: {"description": "not a zip / not multipart"},
}


@router.get("/{dataset_id}/versions", response_model=list[DatasetRead])
def list_versions(
    dataset: ValidDataset, session: SessionDep, principal: Trainer
) -> list[DatasetRead]:
    """Every version of the dataset (any version's id names it), oldest first, each with the
    version it was made from and what changed."""
    return [
        DatasetRead.model_validate(version)
        for version in datasets.list_versions(session, dataset=dataset, principal=principal)
    ]


@router.post(
    "/{dataset_id}/versions",
    response_model=DatasetRead,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_VERSION_SCHEMA,
    responses=_VERSION_ERRORS,
)
async def add_version(
    dataset_id: uuid.UUID, request: Request, session: SessionDep, principal: Trainer
) -> DatasetRead:
    """A new version of the dataset: its latest version's images (or `parent_version`'s),
    minus those named in `remove`, plus the images of the zip `file`, deduplicated and checked
    for leakage against the existing splits as an upload is. Earlier versions stay as they
    are, trainable."""
    settings = get_settings()
    upload = await _receive_zip(request)
    try:
        form = validate_form(DatasetVersionForm, upload.fields)
        options = datasets.VersionOptions(
            validation_fraction=form.validation_fraction,
            test_fraction=form.test_fraction,
            seed=form.seed,
            remove=form.remove_set(),
            parent_version=form.parent_version,
        )
        dataset = await run_in_threadpool(
            lambda: datasets.add_version(
                session,
                dataset_id=dataset_id,
                principal=principal,
                options=options,
                settings=settings,
                zip_path=upload.file_path,
            )
        )
    finally:
        upload.discard()
    return DatasetRead.model_validate(dataset)


async def _from_review_body(request: Request, _: Trainer) -> DatasetVersionFromReview:
    return await read_json_model(request, DatasetVersionFromReview)


@router.post(
    "/{dataset_id}/versions/from-review",
    response_model=DatasetRead,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=json_body_openapi(DatasetVersionFromReview),
    responses=_VERSION_ERRORS,
)
def add_version_from_review(
    dataset_id: uuid.UUID,
    body: Annotated[DatasetVersionFromReview, Depends(_from_review_body)],
    session: SessionDep,
    principal: Trainer,
) -> DatasetRead:
    """A new version of the dataset with your labeled review items (of `model`, or the
    `item_ids`) added under their labels, deduplicated and checked for leakage as an upload
    is. The items leave the queue in the same transaction."""
    settings = get_settings()
    parent = datasets.resolve_dataset_version(
        session, dataset_id=dataset_id, version=body.parent_version, principal=principal
    )
    selection = review.labeled_items(
        session, owner=parent.owner, model=body.model, item_ids=body.item_ids
    )
    options = datasets.VersionOptions(
        validation_fraction=body.validation_fraction,
        test_fraction=body.test_fraction,
        seed=body.seed,
        remove=frozenset(body.remove),
        parent_version=body.parent_version,
    )
    dataset = datasets.add_version(
        session,
        dataset_id=dataset_id,
        principal=principal,
        options=options,
        settings=settings,
        labeled=selection.images,
        before_commit=lambda s: review.consume(s, selection=selection),
    )
    return DatasetRead.model_validate(dataset)
