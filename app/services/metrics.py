"""Metrics read when Prometheus scrapes: jobs by status and the review queues' sizes
(database) and the training queue's depth (broker), so every API replica reports the same,
current values."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core.config import get_settings
from app.core.metrics import REGISTRY
from app.core.queue import queue_depth
from app.db.session import session_scope
from app.services.jobs import count_jobs_by_status
from app.services.review import queue_totals

logger = logging.getLogger(__name__)


class StateCollector(Collector):
    """Jobs by status and queue depth; a failing source is logged and left out of that
    scrape instead of failing it."""

    def collect(self) -> Iterator[Metric]:
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
        yield from _review_queue_sizes()


def _review_queue_sizes() -> Iterator[Metric]:
    """Every owner's review items by status and the bytes of their images."""
    items = GaugeMetricFamily(
        "smallvision_review_items", "Review queue items (all owners) by status.", labels=["status"]
    )
    size = GaugeMetricFamily(
        "smallvision_review_bytes", "Bytes of the images held by review queue items (all owners)."
    )
    try:
        with session_scope() as session:
            by_status, total_bytes = queue_totals(session)
    except Exception:
        logger.exception("the review queue sizes could not be read for /metrics")
        return
    for status, count in by_status.items():
        items.add_metric([status], count)
    size.add_metric([], total_bytes)
    yield items
    yield size


REGISTRY.register(StateCollector())
