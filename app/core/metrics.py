"""Prometheus metrics of the API process, served at `GET /metrics`.

Request counts and latencies are recorded by the request middleware, prediction latency and
batch sizes by the inference service; jobs by status and the training queue's depth are read
when Prometheus scrapes (from the database and the broker), so every API replica reports the
same, current values for them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "smallvision_http_requests_total",
    "HTTP requests answered, by route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "smallvision_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
PREDICT_LATENCY = Histogram(
    "smallvision_predict_seconds",
    "Time spent in the service per prediction request (decoding, queueing, inference).",
    ["model"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
    registry=REGISTRY,
)
PREDICT_IMAGES = Counter(
    "smallvision_predict_images_total", "Images classified.", ["model"], registry=REGISTRY
)
FORWARD_BATCH = Histogram(
    "smallvision_forward_batch_images",
    "Images per forward pass (micro-batching joins concurrent requests).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)


class _StateCollector(Collector):
    """Jobs by status and queue depth, read at scrape time; a failing source is logged and
    left out of that scrape instead of failing it."""

    def collect(self) -> Iterator[Metric]:
        from app.core.config import get_settings
        from app.core.queue import queue_depth
        from app.db.session import session_scope
        from app.services.jobs import count_jobs_by_status

        jobs = GaugeMetricFamily("smallvision_jobs", "Training jobs by status.", labels=["status"])
        try:
            with session_scope() as session:
                for status, count in count_jobs_by_status(session).items():
                    jobs.add_metric([status], count)
            yield jobs
        except Exception:
            logger.exception("jobs by status could not be read for /metrics")
        queue = get_settings().training_queue
        depth = GaugeMetricFamily(
            "smallvision_queue_depth", "Messages waiting in the broker queue.", labels=["queue"]
        )
        try:
            depth.add_metric([queue], queue_depth(queue))
            yield depth
        except Exception:
            logger.exception("the queue depth could not be read for /metrics")


REGISTRY.register(_StateCollector())
