"""The one Settings class: every URL, data root and limit, read from the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "SMALLVISION_"

# The formats for devices (app/ml/edge.py's EdgeFormat).
EdgeExportName = Literal["tflite", "tflite_fp16", "tflite_int8", "onnx_int8"]


def _comma_separated(value: object) -> object:
    """`a,b` from the environment, or a list as it is."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Runtime configuration. Every field is read from `SMALLVISION_<FIELD_NAME>` or `.env`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"
    # One JSON object per log line (with the request id); false: plain text for a terminal.
    log_json: bool = True

    # Everything the service writes lives below this folder unless a root is set on its own.
    data_dir: Path = PROJECT_ROOT / "var"
    database_url: str = Field(
        default_factory=lambda data: f"sqlite:///{data['data_dir'] / 'smallvision.db'}"
    )
    # kombu's SQLAlchemy transport is a real broker in a file: nothing to install for `make run`.
    broker_url: str = Field(
        default_factory=lambda data: f"sqla+sqlite:///{data['data_dir'] / 'broker.db'}"
    )
    datasets_dir: Path = Field(default_factory=lambda data: data["data_dir"] / "datasets")
    models_dir: Path = Field(default_factory=lambda data: data["data_dir"] / "models")
    feature_cache_dir: Path = Field(default_factory=lambda data: data["data_dir"] / "feature_cache")
    # Images of predictions kept for review, per owner, each stored once by its sha256.
    review_dir: Path = Field(default_factory=lambda data: data["data_dir"] / "review")
    # Where datasets, model versions, the feature cache, review images and explanations are
    # kept: "local" (the folders above) or "s3", an S3-compatible bucket (AWS S3, MinIO, Ceph,
    # R2...) under `s3_prefix`, so that API replicas and workers on other machines share
    # nothing but the database, the broker and the bucket. Credentials come from boto3's
    # standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile or a role).
    storage_backend: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None  # None: AWS itself
    s3_region: str | None = None
    # This machine's own copies of what it read from the bucket: dataset images by content
    # hash, model versions by manifest checksum, features, staging folders for uploads.
    cache_dir: Path = Field(default_factory=lambda data: data["data_dir"] / "cache")
    # Past this size the least recently used copies are removed (after each download).
    cache_max_bytes: int = Field(default=50 * 1024**3, gt=0)
    # Where keras.applications weight files are looked up first (then $KERAS_HOME/models).
    pretrained_weights_dir: Path | None = None
    # On by default, as Keras users expect: a missing weights file is downloaded into
    # $KERAS_HOME/models by the worker that needs it. Without a network the job fails within
    # the timeout, saying which file to put where. False: a job whose base's weights are not
    # on disk is refused at once (400).
    allow_weights_download: bool = True
    # Where weight files are downloaded from: Keras' own storage, or a mirror serving the same
    # file names.
    weights_download_url: str | None = None
    weights_download_timeout_seconds: float = Field(default=20.0, gt=0)
    # On GPU workers: float16 compute with float32 weights (no effect on CPU-only workers).
    mixed_precision: bool = True

    # Labeling help (suggestions, label issues) ranks with this base's features, at this size
    # (None: the base's native size), as the default request trains with.
    labeling_base_model: str = "mobilenet_v2"
    labeling_image_size: int | None = Field(default=None, ge=32, le=512)

    training_queue: str = "training"
    default_queue: str = "default"
    # Seconds the readiness probe waits for the database or the broker before it reports 503.
    readiness_timeout_seconds: float = Field(default=3.0, gt=0)
    # A running job whose worker has not reported for this long is taken over by another.
    job_heartbeat_timeout_seconds: float = Field(default=900.0, gt=0)

    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)
    max_uncompressed_bytes: int = Field(default=8 * 1024**3, gt=0)
    max_zip_entries: int = Field(default=200_000, gt=0)
    max_compression_ratio: float = Field(default=200.0, gt=1)
    max_image_pixels: int = Field(default=50_000_000, gt=0)
    max_image_file_bytes: int = Field(default=64 * 1024**2, gt=0)
    # A zip's labels.csv / labels.jsonl (a line per image: 200,000 lines of 160 bytes).
    max_label_list_bytes: int = Field(default=32 * 1024**2, gt=0)
    # Classes in one dataset (a label per class folder); hosted products allow a few hundred.
    max_dataset_classes: int = Field(default=500, ge=2)

    # Every request body but a dataset upload (predictions in JSON, multipart or binary
    # tensors, job requests): larger is a 413 before it is read; compressed bodies are held to
    # it after decompression too.
    max_request_body_bytes: int = Field(default=32 * 1024**2, gt=0)
    # A client that stops sending its request headers or body for this long is cut off (408).
    header_read_timeout_seconds: float = Field(default=10.0, gt=0)
    # A request line and headers larger than this are refused (431) and the connection closed.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    body_read_timeout_seconds: float = Field(default=30.0, gt=0)
    # Memory that images being decoded for predictions may hold at once, per API process:
    # a request waits for its share (a decompression bomb cannot take more than this).
    decode_memory_budget_bytes: int = Field(default=128 * 1024**2, gt=0)
    # The longest a prediction may wait for its forward pass before it is answered 503.
    predict_timeout_seconds: float = Field(default=60.0, gt=0)

    # Per-owner limits: images in one dataset, jobs queued or running at once, and each API
    # key's prediction requests (a token bucket per key: `predict_rate_per_second` sustained,
    # bursts up to `predict_burst`; over it, 429 with Retry-After).
    max_dataset_images: int = Field(default=100_000, gt=0)
    # Custom Vision compatible API: projects per owner (Azure's S0 tier allows 100).
    max_custom_vision_projects: int = Field(default=100, gt=0)
    # ... and the largest image file it takes for training, and for a prediction (Azure's
    # limits: 6 MB and 4 MB).
    max_custom_vision_training_image_bytes: int = Field(default=6 * 1024**2, gt=0)
    max_custom_vision_prediction_image_bytes: int = Field(default=4 * 1024**2, gt=0)
    # Images given by URL (classify_image_url, create_images_from_urls) are fetched from
    # public addresses only: a loopback, private or link-local one is refused (the service
    # would otherwise reach into its own network for a caller) unless this allows it; and
    # within this many seconds.
    custom_vision_fetch_private_urls: bool = False
    custom_vision_fetch_timeout_seconds: float = Field(default=10.0, gt=0)
    max_active_jobs_per_owner: int = Field(default=4, gt=0)
    predict_rate_per_second: float = Field(default=50.0, gt=0)
    predict_burst: int = Field(default=100, gt=0)
    # Keys that are not valid, per client address and API process: past the burst, a client
    # address is refused (429) before its keys are looked up, until its bucket refills.
    failed_keys_per_second: float = Field(default=5.0, gt=0)
    failed_key_burst: int = Field(default=50, gt=0)
    # Where the prediction token buckets live: a Redis every API replica reaches, so the rate
    # holds for the deployment; unset, each API process keeps its own (N replicas admit N
    # times the rate). The job limit needs nothing here: it is a database lock.
    redis_url: str | None = None

    # Serving: images per predict request, how many versions stay loaded per API process,
    # the largest batch one forward pass takes, and how often active versions are re-checked
    # (a newly trained or activated version is loaded before any request asks for it).
    max_predict_images: int = Field(default=64, gt=0)
    model_cache_size: int = Field(default=4, gt=0)
    predict_max_batch: int = Field(default=32, gt=0)
    model_refresh_seconds: float = Field(default=5.0, gt=0)
    # Within these seconds, an API process answers from what it last read instead of asking
    # the database again: whether a key is valid (a key revoked by another process keeps
    # working here that long; at once in the process that revoked it; 0: always ask) and
    # which version a prediction goes to (an activation by another process is seen that late).
    api_key_cache_seconds: float = Field(default=5.0, ge=0)
    version_resolution_cache_seconds: float = Field(default=1.0, ge=0)
    # What runs predictions: "auto" is ONNX Runtime for versions that have an ONNX export
    # (measured 2x+ faster than Keras on CPU: docs/BENCHMARKS.md), Keras for the others;
    # "keras" or "onnxruntime" force one. ONNX Runtime's threads per model: 0 = every core.
    serving_runtime: Literal["auto", "keras", "onnxruntime"] = "auto"
    onnx_threads: int = Field(default=0, ge=0)
    # Export every new model version to ONNX when it is saved (a few seconds per version).
    export_onnx: bool = True
    # Formats for devices a worker builds once training has registered a version, each
    # checked on the version's test split (comma separated; empty: none after training, each
    # is then built when first downloaded).
    edge_export_formats: Annotated[
        list[EdgeExportName], NoDecode, BeforeValidator(_comma_separated)
    ] = Field(default_factory=lambda: list(get_args(EdgeExportName)))
    # An export whose accuracy is more than this many points below its float model's on the
    # check is degraded: its download answers 409 unless the request says allow_degraded=true.
    edge_export_max_loss_points: float = 1.5
    # Workers without a GPU extract features with ONNX Runtime (the base exported once per
    # base, weights and size, about 20 s; then 2.7x Keras' images/s on 2 cores).
    onnx_feature_extraction: bool = True
    # Grad-CAM overlays (`explain=true`) kept per owner for GET /explanations/{id}.png; the
    # oldest are removed past either limit. An overlay is at most 512 px on its longer side
    # (at most ~0.8 MB), and a request may ask for at most `max_explained_images` of them.
    max_explanations_per_owner: int = Field(default=500, gt=0)
    max_explanation_bytes_per_owner: int = Field(default=128 * 1024**2, gt=0)
    max_explained_images: int = Field(default=16, gt=0)

    # The review queue of each owner (predictions below their model's review_threshold): past
    # either limit its oldest items are dropped, unlabeled ones first. The bytes are those of
    # the kept image files, so the queue's disk use is at most this per owner.
    review_max_items_per_owner: int = Field(default=1000, gt=0)
    review_max_bytes_per_owner: int = Field(default=512 * 1024**2, gt=0)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        """Stop a production process from starting on settings that only suit one machine."""
        if self.environment == "production" and self.broker_url.startswith("sqla+"):
            # The file broker cannot be shared between machines: GPU workers would never see jobs.
            raise ValueError(
                f"{ENV_PREFIX}BROKER_URL must name a real broker (e.g. redis://) in production"
            )
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError(f"{ENV_PREFIX}STORAGE_BACKEND=s3 needs {ENV_PREFIX}S3_BUCKET")
        return self

    @property
    def uses_embedded_broker(self) -> bool:
        """True when the broker is kombu's SQLAlchemy transport (the `make run` default)."""
        return self.broker_url.startswith("sqla+")

    @property
    def is_sqlite(self) -> bool:
        """True when the SQL store is a SQLite file."""
        return self.database_url.startswith("sqlite")

    def ensure_directories(self) -> None:
        """Create the local data folders (and the SQLite files' folders) if they are missing."""
        for path in (
            self.data_dir,
            self.datasets_dir,
            self.models_dir,
            self.feature_cache_dir,
            self.review_dir,
            self.cache_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    """The process-wide Settings, read once."""
    return Settings()
