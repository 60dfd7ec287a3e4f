"""Datasets: upload a labeled zip, list, inspect, preview and delete."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.api.bodies import (
    MultipartUpload,
    json_body_openapi,
    multipart_body_openapi,
    read_json_model,
    receive_multipart,
    validate_form,
)
from app.api.deps import (
    MAX_OFFSET,
    DecodeBudgetDep,
    ModelCacheDep,
    SessionDep,
    Trainer,
    ValidDataset,
)
from app.core.config import get_settings
from app.core.errors import BadRequestError
from app.schemas.datasets import (
    DatasetLabels,
    DatasetRead,
    DatasetUploadForm,
    DatasetVersionForm,
    DatasetVersionFromReview,
)
from app.schemas.labeling import AnalysisPending, LabelIssueList, SuggestionList
from app.services import datasets, labeling, previews, review

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


@router.get(
    "/{dataset_id}/images/{image_id}/thumbnail",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}},
        404: {"description": "no such dataset (or not yours), or no such image in it"},
    },
)
def image_thumbnail(
    dataset: ValidDataset,
    budget: DecodeBudgetDep,
    image_id: Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="the file's sha256")],
    size: Annotated[int, Query(ge=16, le=previews.MAX_THUMBNAIL_SIDE)] = 160,
) -> Response:
    """One image of the dataset version, upright, as a JPEG at most `size` pixels on a side."""
    jpeg = previews.thumbnail_jpeg(
        dataset, image_id, size=size, settings=get_settings(), budget=budget
    )
    return Response(
        content=jpeg,
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=86400"},  # a version never changes
    )


_ANALYSIS_PENDING: dict[int | str, dict[str, Any]] = {
    202: {
        "model": AnalysisPending,
        "description": "a worker is computing the version's features: ask again after "
        "Retry-After seconds",
    },
    404: {"description": "no such dataset (or not yours)"},
    503: {"description": "the worker could not compute them (the error says why)"},
}


def _pending(dataset: ValidDataset, pending: labeling.Pending) -> JSONResponse:
    body = AnalysisPending(
        dataset_id=dataset.id,
        version=dataset.version,
        status=pending.status,
        retry_after_seconds=pending.retry_after_seconds,
        detail=pending.detail,
    )
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Retry-After": str(pending.retry_after_seconds)},
    )


@router.get(
    "/{dataset_id}/suggestions",
    response_model=SuggestionList,
    responses={**_ANALYSIS_PENDING, 400: {"description": "a model of other classes"}},
)
async def suggest_images(
    dataset: ValidDataset,
    session: SessionDep,
    cache: ModelCacheDep,
    budget: DecodeBudgetDep,
    principal: Trainer,
    count: Annotated[int, Query(ge=1, le=200)] = 20,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    model: Annotated[str | None, Query(max_length=200)] = None,
    version: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
) -> SuggestionList | JSONResponse:
    """The unlabeled images of this version most worth labeling next, each with its likeliest
    classes and why it was picked: while a class has fewer than 10 labeled images, typical
    images of groups no labeled image is in; then the images least sure of, one per group of
    similar ones. "Sure" by `model` (one of yours with the dataset's classes; `version`, else
    its active one) or by a softmax regression on the labeled images' features. The first
    request has a worker compute the version's features (202 with Retry-After until then)."""
    arrays = await run_in_threadpool(lambda: labeling.ready(session, dataset=dataset))
    if isinstance(arrays, labeling.Pending):
        return _pending(dataset, arrays)
    probabilities, answered_by = None, None
    if model is not None and arrays.unlabeled_ids:
        probabilities, answered_by = await labeling.model_answers(
            session,
            dataset=dataset,
            arrays=arrays,
            model=model,
            version=version,
            cache=cache,
            budget=budget,
            principal=principal,
        )
    return await run_in_threadpool(
        lambda: labeling.suggestions(
            dataset,
            arrays,
            count=count,
            seed=seed,
            probabilities=probabilities,
            answered_by=answered_by,
        )
    )


@router.get(
    "/{dataset_id}/label-issues",
    response_model=LabelIssueList,
    responses={**_ANALYSIS_PENDING, 400: {"description": "a multi-label dataset"}},
)
def find_label_issues(
    dataset: ValidDataset,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> LabelIssueList | JSONResponse:
    """The labeled images of this version whose given label is likely wrong, most likely
    first, each with the label a model that never saw it suggests: confident learning on
    out-of-fold answers. Fix them with POST /datasets/{id}/labels (relabel, or remove)."""
    found = labeling.label_issues(session, dataset=dataset, offset=offset, limit=limit)
    return _pending(dataset, found) if isinstance(found, labeling.Pending) else found


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
        options = _version_options(form, remove=form.remove_set())
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


def _version_options(
    body: DatasetVersionForm | DatasetVersionFromReview | DatasetLabels,
    *,
    remove: Collection[str],
    labels: Mapping[str, tuple[str, ...]] | None = None,
) -> datasets.VersionOptions:
    """A new version's options from a request: how it splits new images, what it leaves out
    and relabels, which version it builds on."""
    return datasets.VersionOptions(
        validation_fraction=body.validation_fraction,
        test_fraction=body.test_fraction,
        seed=body.seed,
        remove=frozenset(remove),
        labels=labels or {},
        parent_version=body.parent_version,
    )


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
    dataset = datasets.add_version(
        session,
        dataset_id=dataset_id,
        principal=principal,
        options=_version_options(body, remove=body.remove),
        settings=settings,
        labeled=selection.images,
        before_commit=lambda s: review.consume(s, selection=selection),
    )
    return DatasetRead.model_validate(dataset)


async def _labels_body(request: Request, _: Trainer) -> DatasetLabels:
    return await read_json_model(request, DatasetLabels)


@router.post(
    "/{dataset_id}/labels",
    response_model=DatasetRead,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=json_body_openapi(DatasetLabels),
    responses=_VERSION_ERRORS,
)
def label_images(
    dataset_id: uuid.UUID,
    body: Annotated[DatasetLabels, Depends(_labels_body)],
    session: SessionDep,
    principal: Trainer,
) -> DatasetRead:
    """A new version of the dataset with these images labeled (unlabeled ones, such as the
    suggestions, are then split like new images; a labeled one keeps its split) and those in
    `remove` left out. Every label must be a class of the dataset and every image one of the
    version's; otherwise nothing is made (400)."""
    dataset = datasets.add_version(
        session,
        dataset_id=dataset_id,
        principal=principal,
        options=_version_options(
            body,
            remove=body.remove,
            labels={entry.image_id: entry.given() for entry in body.labels},
        ),
        settings=get_settings(),
    )
    return DatasetRead.model_validate(dataset)
