"""The Celery app shared by the API (which only sends tasks by name) and the workers."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from kombu.exceptions import OperationalError

from app.core.config import Settings, get_settings
from app.core.errors import ServiceUnavailableError

# Task names are the contract between the API and the workers: the API never imports worker code.
RUN_TRAINING_JOB = "training.run_job"
# Builds a model version's export (a SavedModel archive) asked for by a download; on the
# default queue, which every worker started by `app.cli worker` consumes besides training.
BUILD_EXPORT = "exports.build"
# Computes a dataset version's analysis for labeling help (features and out-of-fold answers);
# on the default queue too.
ANALYSE_DATASET = "labeling.analyse"

# A Redis-delivered task whose worker has not acknowledged it in this many seconds is redelivered.
# acks_late holds the ack until the job ends, so this must outlast the longest training job;
# a redelivered job that is no longer queued is ignored by the worker (see services.training).
REDIS_VISIBILITY_TIMEOUT_SECONDS = 24 * 3600


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for long, one-at-a-time training tasks whose state lives in SQL."""
    app = Celery("smallvision", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,  # job state lives in the SQL store, not in Celery results
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # Each job runs in a fresh child process that exits afterwards: TensorFlow (and CUDA)
        # memory is only ever given back to the system when its process ends.
        worker_max_tasks_per_child=1,
        task_default_queue=settings.default_queue,
        task_routes={"training.*": {"queue": settings.training_queue}},
        broker_connection_retry_on_startup=True,
        # kombu's SQL transport hands its options to create_engine, so only Redis gets these.
        broker_transport_options=(
            {}
            if settings.uses_embedded_broker
            else {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_SECONDS}
        ),
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
    )
    return app


@lru_cache(maxsize=4)
def _producer(broker_url: str) -> Celery:  # noqa: ARG001  (the cache's key: one per broker)
    return make_celery(get_settings())


def send_task(name: str, *, args: list[str], queue: str) -> None:
    """Send task `name` to `queue`; raise ServiceUnavailableError if the broker cannot take it."""
    try:
        _producer(get_settings().broker_url).send_task(
            name,
            args=args,
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except (OperationalError, OSError) as exc:
        raise ServiceUnavailableError(f"the job queue (broker) is unreachable: {exc}") from exc


def queue_depth(queue: str) -> int:
    """Messages waiting in `queue` on the configured broker (0 if the queue does not exist)."""
    from kombu.connection import Connection
    from kombu.exceptions import ChannelError

    settings = get_settings()
    with Connection(
        settings.broker_url, connect_timeout=settings.readiness_timeout_seconds
    ) as conn:  # type: ignore[no-untyped-call]
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:  # never declared or drained and removed: nothing waits
            return 0
        finally:
            channel.close()
