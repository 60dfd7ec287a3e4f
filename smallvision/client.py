"""A typed Python client of the smallvision HTTP API: what the `smallvision` command is built on.

It speaks only the public API (the same as curl and the web console) and imports nothing of
the server, so it works against any smallvision service it can reach::

    from smallvision import Client

    with Client("http://127.0.0.1:8000", key="sv_...") as client:
        with open("pets.zip", "rb") as archive:
            dataset = client.upload_dataset(archive, name="pets")
        job = client.start_job(dataset["id"], epochs=2)
        for job_now, metrics in client.watch_job(job["id"]):
            print(job_now["status"], len(metrics["epochs"]))
        print(client.predict([Path("cat.jpg")], top_k=3)["predictions"])

Every method raises `ApiError` (status, code, detail, retry_after) for an error answer and
`ServiceUnreachableError` when no answer came.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, NotRequired, Self, TypedDict, cast
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE = "SMALLVISION_URL"
KEY_VARIABLE = "SMALLVISION_API_KEY"
FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

# An upload is answered once every image in it has been decoded and checked: minutes for a
# large zip. Everything else answers within the default timeout.
UPLOAD_TIMEOUT = httpx.Timeout(60.0, read=3600.0)
DEFAULT_TIMEOUT = httpx.Timeout(60.0)
_CHUNK_BYTES = 1024 * 1024


class ApiError(Exception):
    """An error answer of the API: `{"error": code, "detail": ...}` with its HTTP status."""

    def __init__(
        self, status: int, code: str, detail: Any, *, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(f"{status} {code}: {self.message}")

    @property
    def message(self) -> str:
        """The detail as one line: validation errors as `field: problem; ...`."""
        if isinstance(self.detail, list):
            return "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', []) if p != 'body')}: {item.get('msg')}"
                if isinstance(item, dict)
                else str(item)
                for item in self.detail
            )
        if isinstance(self.detail, dict):
            return "; ".join(f"{key}: {value}" for key, value in self.detail.items())
        return str(self.detail) if self.detail not in (None, "") else self.code


class ServiceUnreachableError(ApiError):
    """No HTTP answer at all: the address is wrong, or the service is not running."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(0, "unreachable", reason)


# The answers' shapes. Each mirrors a model of the server's OpenAPI schema (its keys and which
# are always there), as tests/test_client_types.py checks.

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Method = Literal["auto", "scratch", "bottleneck", "finetune"]


class Dataset(TypedDict):
    id: str
    name: str
    lineage_id: str  # the id of the dataset's first version
    version: int
    parent_id: str | None
    diff: dict[str, Any] | None  # images added and removed per class and split (null for v1)
    fingerprint: str | None
    status: str
    class_names: list[str]
    task: Literal["multiclass", "multilabel"]  # one class per image, or any number of labels
    split_counts: dict[str, dict[str, int]]
    stats: dict[str, Any]  # image_count, skipped, duplicates, leakage, warnings, ...
    created_at: str


class ClassProbability(TypedDict):
    label: str
    probability: float


class Suggestion(TypedDict):
    image_id: str
    image_url: str
    predicted: list[ClassProbability]
    score: float
    reason: str


class SuggestionList(TypedDict):
    dataset_id: str
    version: int
    strategy: Literal["typical_diverse", "uncertain_diverse"]
    why: str
    answers_from: str | None
    labeled: int
    smallest_class: int
    unlabeled: int
    items: list[Suggestion]


class LabelIssue(TypedDict):
    image_id: str
    image_url: str
    split: str
    given_label: str
    suggested_label: str
    given_probability: float
    suggested_probability: float


class LabelIssueList(TypedDict):
    dataset_id: str
    version: int
    method: str
    checked: int
    found: int
    out_of_fold_accuracy: float
    offset: int
    limit: int
    items: list[LabelIssue]


class JobAccepted(TypedDict):
    id: str
    status: JobStatus


class ClassScores(TypedDict):
    precision: float
    recall: float
    f1: float
    support: int
    average_precision: NotRequired[float | None]  # multi-label
    threshold: NotRequired[float | None]  # multi-label: the label's threshold


class PlattScores(TypedDict):
    slope: float
    intercept: float


class CalibrationReport(TypedDict):
    method: Literal["temperature", "platt"]  # platt: per label, multi-label models
    temperature: NotRequired[float | None]  # log-probabilities are divided by it
    per_label: NotRequired[dict[str, PlattScores] | None]
    fitted_on_images: int
    bins: int
    split: str
    ece_before: float  # expected calibration error before calibration
    ece_after: float


class OutlierReport(TypedDict):
    """The version's "unknown" answer: its score's threshold, and what it turned away."""

    score: str
    threshold: float  # a score above it is answered unknown
    neighbours: int
    reference_images: int
    calibrated_on: Literal["validation"]
    calibration_images: int
    calibration_rejected: float
    target_rejection: float
    assured: bool  # false: too few calibration images for the threshold's promise
    negatives: NotRequired[int]  # negative examples the score compares with
    held_out_negatives: NotRequired[int | None]
    held_out_negatives_rejected: NotRequired[float | None]  # their share answered unknown
    split: NotRequired[str | None]
    rejected: NotRequired[float | None]  # the share of that split's images answered unknown
    note: NotRequired[str | None]


class Evaluation(TypedDict):
    task: NotRequired[Literal["multiclass", "multilabel"] | None]  # multilabel, else absent
    accuracy: float  # multi-label: the exact-match ratio
    samples: int
    per_class: dict[str, ClassScores]  # multi-label: per label
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    classes: list[str]
    mean_average_precision: NotRequired[float | None]  # the rest: multi-label only
    micro_f1: NotRequired[float | None]
    macro_f1: NotRequired[float | None]
    exact_match: NotRequired[float | None]
    mean_jaccard: NotRequired[float | None]
    split: NotRequired[str | None]
    calibration: NotRequired[CalibrationReport | None]
    outliers: NotRequired[OutlierReport | None]


class Candidate(TypedDict):
    """One model a run trained (or decided not to)."""

    method: Method
    settings: dict[str, Any]
    validation: NotRequired[dict[str, float] | None]  # accuracy, loss
    test: NotRequired[dict[str, float] | None]  # accuracy
    seconds: NotRequired[float]
    skipped: NotRequired[str | None]  # why it was not trained


class Chosen(TypedDict):
    method: Method
    reason: str


class ModelRef(TypedDict):
    name: str
    version: int
    id: str
    active: bool


class DatasetRef(TypedDict):
    id: str
    name: str
    version: int
    lineage_id: str
    fingerprint: str


class Timings(TypedDict):
    total: float
    features: NotRequired[float | None]
    saving: float


class RunRuntime(TypedDict):
    gpus: list[str]
    feature_extraction: NotRequired[str | None]


class JobResult(TypedDict):
    """A training job's result (results of older releases lack some of these)."""

    method: Method
    evaluation: NotRequired[Evaluation | None]
    best_epoch: NotRequired[int | None]
    model: NotRequired[ModelRef | None]
    candidates: NotRequired[list[Candidate]]
    chosen: NotRequired[Chosen | None]
    warnings: NotRequired[list[str]]
    exports: NotRequired[dict[str, Any]]
    dataset: NotRequired[DatasetRef | None]
    timings: NotRequired[Timings | None]
    runtime: NotRequired[RunRuntime | None]
    validation_accuracy: NotRequired[float | None]
    validation_mean_average_precision: NotRequired[float | None]  # multi-label
    single_view_accuracy: NotRequired[float | None]
    feature_cache_hit: NotRequired[bool | None]
    feature_cache_key: NotRequired[str | None]
    feature_seconds: NotRequired[float | None]
    feature_runtime: NotRequired[str | None]
    weights: NotRequired[str | None]


class WorkerReport(TypedDict):
    python: str
    tensorflow: str
    keras: str
    keras_backend: str
    gpus: list[str]
    cpu_devices: list[str]
    pretrained_weights_dir: str | None
    pretrained_weight_files: list[str]


class Job(TypedDict):
    id: str
    dataset_id: str | None
    dataset_version: int | None
    method: str
    parameters: dict[str, Any]
    status: JobStatus
    progress: float
    progress_detail: dict[str, Any]
    result: JobResult | WorkerReport | None
    error: str | None
    worker_id: str | None
    cancel_requested: bool
    created_at: str
    started_at: str | None
    heartbeat_at: str | None
    finished_at: str | None


class Epoch(TypedDict):
    stage: str
    epoch: int
    loss: float | None
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    learning_rate: float | None
    seconds: float | None


class JobMetrics(TypedDict):
    job_id: str
    status: JobStatus
    progress: float
    epochs: list[Epoch]
    best_epoch: int | None
    evaluation: Evaluation | None
    candidates: list[Candidate]
    chosen: Chosen | None
    warnings: list[str]


class ImageAnswer(TypedDict):
    image_id: str
    image_url: str
    true_labels: list[str]
    predicted_labels: list[str]
    probabilities: dict[str, float]
    correct: bool


class JobPredictions(TypedDict):
    job_id: str
    dataset_id: str
    split: str
    classes: list[str]
    evaluated: int
    correct: int
    matching: int
    offset: int
    limit: int
    items: list[ImageAnswer]


class Model(TypedDict):
    name: str
    versions: int
    latest_version: int
    active_version: int | None
    updated_at: str


DownloadFormat = Literal[
    "keras", "onnx", "savedmodel", "tflite", "tflite_fp16", "tflite_int8", "onnx_int8", "docker"
]


class ExportCheck(TypedDict):
    """A format for devices run by its own runtime on the version's held-out images, beside
    the float model."""

    format: str
    runtime: Literal["litert", "onnxruntime"]
    evaluated_on: Literal["test", "validation"]
    images: int
    accuracy: float
    float_accuracy: float
    accuracy_loss_points: float
    agreement: float  # the share of images answered as the float model answers them
    max_probability_difference: float
    max_loss_points: float
    degraded: bool  # its download answers 409 unless allow_degraded
    size_bytes: int
    seconds: float


class Export(TypedDict):
    """A version in another format, built by a worker (with its check, for devices)."""

    format: str
    status: Literal["queued", "running", "ready", "failed"]
    size_bytes: int | None
    sha256: str | None
    error: str | None
    report: NotRequired[ExportCheck | None]
    created_at: str
    finished_at: str | None


# What /predict runs: the version's model, or its int8 ONNX export.
Precision = Literal["float32", "int8"]


class ModelVersion(TypedDict):
    id: str
    name: str
    version: int
    job_id: str | None
    is_active: bool
    sha256: str
    size_bytes: int
    metrics_summary: dict[str, Any]  # method, validation_accuracy, test_accuracy, warnings
    exports: NotRequired[list[Export]]  # the exports asked for so far
    serving_precision: NotRequired[Precision]  # what /predict runs by default
    created_at: str


class LabelProbability(TypedDict):
    label: str
    probability: float
    threshold: NotRequired[float | None]  # multi-label: the label's threshold
    above_threshold: NotRequired[bool | None]  # multi-label: the probability reaches it


class Explanation(TypedDict):
    id: str
    label: str  # the label explained: the top one
    probability: float
    url: str  # the overlay as a PNG image
    png_base64: str


class ImagePrediction(TypedDict):
    filename: str | None
    labels: list[LabelProbability]  # most likely first, listed even when unknown
    labels_above_threshold: NotRequired[list[str] | None]  # multi-label: the labels that pass
    unknown: NotRequired[bool]  # unlike every training image: none of the labels
    outlier_score: NotRequired[float | None]  # null: no unknown answer for this version
    explanation: NotRequired[Explanation | None]


class Prediction(TypedDict):
    model: str
    version: int
    predictions: list[ImagePrediction]
    outlier_threshold: NotRequired[float | None]  # null: no unknown answers
    task: NotRequired[str | None]  # "multilabel" for a multi-label model
    seconds: float
    runtime: str


def _write_body(
    response: httpx.Response,
    destination: IO[bytes],
    on_progress: Callable[[int, int | None], None] | None,
) -> int:
    """Stream a response's body into `destination`; returns the bytes written."""
    total = (
        int(response.headers["content-length"]) if "content-length" in response.headers else None
    )
    received = 0
    for chunk in response.iter_bytes(_CHUNK_BYTES):
        destination.write(chunk)
        received += len(chunk)
        if on_progress:
            on_progress(received, total)
    return received


def _error_from(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):  # a proxy's page, or no body
        body = {"error": f"http_{response.status_code}", "detail": response.reason_phrase}
    retry_after = response.headers.get("retry-after")
    return ApiError(
        response.status_code,
        str(body.get("error", f"http_{response.status_code}")),
        body.get("detail"),
        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


class Client:
    """The smallvision API at `base_url`, called with the API key `key`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        key: str,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_environment(cls, *, url: str | None = None, key: str | None = None) -> Client:
        """A client for `url` or $SMALLVISION_URL (default http://127.0.0.1:8000) with `key`
        or $SMALLVISION_API_KEY; a missing key is a ValueError."""
        key = key or os.environ.get(KEY_VARIABLE)
        if not key:
            raise ValueError(f"no API key: set {KEY_VARIABLE} or pass one")
        return cls(url or os.environ.get(URL_VARIABLE) or DEFAULT_URL, key=key)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise ServiceUnreachableError(self.base_url, str(exc) or type(exc).__name__) from exc
        if response.is_error:
            raise _error_from(response)
        return response

    def _json(self, method: str, path: str, **options: Any) -> Any:
        return self._request(method, path, **options).json()

    # Datasets

    def upload_dataset(
        self,
        archive: IO[bytes],
        *,
        name: str,
        filename: str | None = None,
        validation_fraction: float | None = None,
        test_fraction: float | None = None,
        seed: int | None = None,
        task: Literal["multiclass", "multilabel"] | None = None,
        negative_folder: str | None = None,
    ) -> Dataset:
        """Upload a zip of class folders, or of images and a labels.csv / labels.jsonl (read
        from `archive` as it is sent, so a file object that reports its reads can show upload
        progress); returns the ingest report. `task`: default multilabel where the list gives
        an image several labels; `negative_folder`: the folder of "none of these" images."""
        form = {"name": name}
        for field, value in (
            ("validation_fraction", validation_fraction),
            ("test_fraction", test_fraction),
            ("seed", seed),
            ("task", task),
            ("negative_folder", negative_folder),
        ):
            if value is not None:
                form[field] = str(value)
        upload_name = filename or Path(str(getattr(archive, "name", "dataset.zip"))).name
        files = {"file": (upload_name, archive, "application/zip")}
        return cast(
            Dataset,
            self._json("POST", "/datasets", data=form, files=files, timeout=UPLOAD_TIMEOUT),
        )

    def list_datasets(self, *, limit: int = 500) -> list[Dataset]:
        """Datasets, newest first."""
        return cast(list[Dataset], self._json("GET", "/datasets", params={"limit": limit}))

    def get_dataset(self, dataset_id: str) -> Dataset:
        return cast(Dataset, self._json("GET", f"/datasets/{dataset_id}"))

    def find_dataset(self, name_or_id: str) -> Dataset:
        """A dataset by id, or the newest one with this name (ApiError 404 when none has)."""
        if _is_uuid(name_or_id):
            return self.get_dataset(name_or_id)
        for dataset in self.list_datasets():
            if dataset["name"] == name_or_id:
                return dataset
        raise ApiError(404, "not_found", f"no dataset named {name_or_id!r}")

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/datasets/{dataset_id}")

    def dataset_preview_png(self, dataset_id: str) -> bytes:
        return self._request("GET", f"/datasets/{dataset_id}/preview.png").content

    # Training jobs

    def _analysed(self, path: str, params: dict[str, Any], *, wait_seconds: float) -> Any:
        """GET a labeling-help answer, waiting while a worker computes the version's features
        (202 with Retry-After)."""
        deadline = time.monotonic() + wait_seconds
        while True:
            response = self._request("GET", path, params=params)
            if response.status_code != 202:
                return response.json()
            pause = float(response.headers.get("retry-after", "5"))
            if time.monotonic() + pause > deadline:
                raise ApiError(
                    504,
                    "analysis_pending",
                    f"the dataset's features were not ready within {wait_seconds:g} s; a "
                    "worker is still computing them: try again later",
                )
            time.sleep(pause)

    def suggestions(
        self,
        dataset_id: str,
        *,
        count: int = 20,
        seed: int = 0,
        model: str | None = None,
        version: int | None = None,
        wait_seconds: float = 600.0,
    ) -> SuggestionList:
        """The unlabeled images of the dataset version most worth labeling next (how sure:
        by `model`, else by a model on the labeled images' features)."""
        params: dict[str, Any] = {"count": count, "seed": seed}
        if model is not None:
            params["model"] = model
        if version is not None:
            params["version"] = version
        return cast(
            SuggestionList,
            self._analysed(
                f"/datasets/{dataset_id}/suggestions", params, wait_seconds=wait_seconds
            ),
        )

    def label_issues(
        self, dataset_id: str, *, limit: int = 100, offset: int = 0, wait_seconds: float = 600.0
    ) -> LabelIssueList:
        """The labeled images of the dataset version whose given label looks wrong."""
        return cast(
            LabelIssueList,
            self._analysed(
                f"/datasets/{dataset_id}/label-issues",
                {"limit": limit, "offset": offset},
                wait_seconds=wait_seconds,
            ),
        )

    def label_images(
        self,
        dataset_id: str,
        *,
        labels: Mapping[str, str | list[str]],
        remove: Sequence[str] = (),
    ) -> Dataset:
        """A new version with these images (sha256 -> class, or a list of labels for a
        multi-label dataset) labeled and `remove` left out."""
        body = {
            "labels": [
                {
                    "image_id": image,
                    **({"labels": given} if isinstance(given, list) else {"label": given}),
                }
                for image, given in labels.items()
            ],
            "remove": list(remove),
        }
        return cast(Dataset, self._json("POST", f"/datasets/{dataset_id}/labels", json=body))

    def start_job(
        self,
        dataset_id: str,
        *,
        method: Method | None = None,
        base_model: str | None = None,
        image_size: int | None = None,
        epochs: int | None = None,
        augmentation: bool = True,
        model_name: str | None = None,
        **options: Any,
    ) -> JobAccepted:
        """Queue a training job. Options left out take the server's defaults; `augmentation`
        False turns augmentation off; `options` are any other fields of POST /jobs."""
        chosen = {
            "method": method,
            "base_model": base_model,
            "image_size": image_size,
            "epochs": epochs,
            "model_name": model_name,
            **options,
        }
        request: dict[str, Any] = {"dataset_id": dataset_id}
        request.update({key: value for key, value in chosen.items() if value is not None})
        if not augmentation:
            request["augmentation"] = None
        return cast(JobAccepted, self._json("POST", "/jobs", json=request))

    def list_jobs(self, *, status: str | None = None, limit: int = 100) -> list[Job]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return cast(list[Job], self._json("GET", "/jobs", params=params))

    def get_job(self, job_id: str) -> Job:
        return cast(Job, self._json("GET", f"/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> Job:
        return cast(Job, self._json("POST", f"/jobs/{job_id}/cancel"))

    def job_metrics(self, job_id: str) -> JobMetrics:
        return cast(JobMetrics, self._json("GET", f"/jobs/{job_id}/metrics"))

    def job_predictions(
        self,
        job_id: str,
        *,
        mistakes: bool = False,
        true_label: str | None = None,
        predicted_label: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> JobPredictions:
        """The job's evaluation image by image (a page of the images the filters keep)."""
        params: dict[str, Any] = {"mistakes": mistakes, "limit": limit, "offset": offset}
        if true_label is not None:
            params["true_label"] = true_label
        if predicted_label is not None:
            params["predicted_label"] = predicted_label
        return cast(JobPredictions, self._json("GET", f"/jobs/{job_id}/predictions", params=params))

    def job_curves_png(self, job_id: str) -> bytes:
        return self._request("GET", f"/jobs/{job_id}/metrics.png").content

    def watch_job(
        self, job_id: str, *, interval: float = 1.0, sleep: Callable[[float], None] = time.sleep
    ) -> Iterator[tuple[Job, JobMetrics]]:
        """The job and its curves every `interval` seconds, until (and including) the answer
        in which it has finished."""
        while True:
            job = self.get_job(job_id)
            yield job, self.job_metrics(job_id)
            if job["status"] in FINISHED_STATUSES:
                return
            sleep(interval)

    # The model registry

    def list_models(self) -> list[Model]:
        return cast(list[Model], self._json("GET", "/models"))

    def list_versions(self, name: str) -> list[ModelVersion]:
        """The model's versions, newest first."""
        return cast(list[ModelVersion], self._json("GET", f"/models/{_path(name)}/versions"))

    def get_version(self, name: str, version: int) -> ModelVersion:
        """One version, with its evaluation summary and its exports."""
        return cast(ModelVersion, self._json("GET", f"/models/{_path(name)}/versions/{version}"))

    def activate_version(self, name: str, version: int) -> ModelVersion:
        return cast(
            ModelVersion,
            self._json("POST", f"/models/{_path(name)}/versions/{version}/activate"),
        )

    def set_serving(self, name: str, version: int, *, precision: Precision) -> ModelVersion:
        """What /predict runs for the version by default (int8: its int8 ONNX export, once
        that passed its accuracy check; the service answers 409 before)."""
        return cast(
            ModelVersion,
            self._json(
                "PUT",
                f"/models/{_path(name)}/versions/{version}/serving",
                json={"precision": precision},
            ),
        )

    def download_version(
        self,
        name: str,
        version: int,
        destination: IO[bytes],
        *,
        format: DownloadFormat = "keras",
        bundle: bool = False,
        allow_degraded: bool = False,
        on_progress: Callable[[int, int | None], None] | None = None,
        on_waiting: Callable[[Export], None] | None = None,
        wait_seconds: float = 600.0,
    ) -> int:
        """Write the version's file in `format` to `destination` (with `bundle`, a zip of it
        with labels.json, preprocessing.json and predict.py); `on_progress(received, total)`
        after each chunk. The formats a worker builds (savedmodel and those for devices): until
        ready (at most `wait_seconds`) the server answers 202 and this waits as it says,
        calling `on_waiting(export)`. A degraded export is an ApiError 409 (export_degraded)
        unless `allow_degraded`. Returns the number of bytes written."""
        path = f"/models/{_path(name)}/versions/{version}/download"
        params: dict[str, str] = {"format": format}
        if bundle:
            params["bundle"] = "true"
        if allow_degraded:
            params["allow_degraded"] = "true"
        deadline = time.monotonic() + wait_seconds
        try:
            while True:
                with self._http.stream("GET", path, params=params) as response:
                    if response.status_code == 202:
                        response.read()
                        pause = float(response.headers.get("retry-after", "5"))
                        if time.monotonic() + pause > deadline:
                            raise ApiError(
                                504,
                                "export_pending",
                                f"the {format} export of {name} v{version} was not ready within "
                                f"{wait_seconds:g} s; it is still being built: try again later",
                            )
                        if on_waiting:
                            on_waiting(cast(Export, response.json()))
                        time.sleep(pause)
                        continue
                    if response.is_error:
                        response.read()
                        raise _error_from(response)
                    return _write_body(response, destination, on_progress)
        except httpx.TransportError as exc:
            raise ServiceUnreachableError(self.base_url, str(exc) or type(exc).__name__) from exc

    def list_exports(self, name: str, version: int) -> list[Export]:
        """The version's exports asked for so far, with their state."""
        return cast(
            list[Export], self._json("GET", f"/models/{_path(name)}/versions/{version}/exports")
        )

    # Prediction

    def predict(
        self,
        images: Sequence[Path],
        *,
        model: str | None = None,
        version: int | None = None,
        top_k: int = 5,
        detect_unknown: bool = True,
        outlier_threshold: float | None = None,
        label_threshold: float | None = None,
        precision: Precision | None = None,
    ) -> Prediction:
        """Top-k labels of each image from `model` (default: the only active model) at
        `version` (default: its active version), and whether each is unknown (unlike every
        training image; `detect_unknown=False` turns it off, `outlier_threshold` overrides the
        version's threshold). A multi-label model lists every label, and the labels above
        their thresholds (`label_threshold`: one for all of them). `precision` int8 asks for
        the version's int8 ONNX export (default: the version's serving precision)."""
        form: dict[str, str] = {"top_k": str(top_k)}
        if model is not None:
            form["model"] = model
        if version is not None:
            form["version"] = str(version)
        if not detect_unknown:
            form["detect_unknown"] = "false"
        if outlier_threshold is not None:
            form["outlier_threshold"] = str(outlier_threshold)
        if label_threshold is not None:
            form["label_threshold"] = str(label_threshold)
        if precision is not None:
            form["precision"] = precision
        files = [("files", (path.name, path.read_bytes())) for path in images]
        return cast(Prediction, self._json("POST", "/predict", data=form, files=files))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _path(segment: str) -> str:
    """A name as exactly one path segment, whatever characters it holds."""
    return quote(segment, safe="")
