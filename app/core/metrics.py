"""Prometheus metrics of the API process, served at `GET /metrics`.

Request counts and latencies are recorded by the request middleware, prediction latency and
batch sizes by the inference service; jobs by status, the training queue's depth and the
review queues' sizes are read when Prometheus scrapes (app/services/metrics.py registers that
collector here).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
RUNTIME_IMAGES = Counter(
    "smallvision_predict_runtime_images_total",
    "Images classified, by the runtime that ran the forward pass (onnxruntime or keras).",
    ["runtime"],
    registry=REGISTRY,
)
FORWARD_BATCH = Histogram(
    "smallvision_forward_batch_images",
    "Images per forward pass (micro-batching joins concurrent requests).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
REVIEW_CAPTURED = Counter(
    "smallvision_review_captured_total",
    "Predictions kept for review (top probability below their model's review_threshold).",
    registry=REGISTRY,
)
REVIEW_DROPPED = Counter(
    "smallvision_review_dropped_total",
    "Review items dropped, oldest first, because an owner's queue was over its limits.",
    registry=REGISTRY,
)
RATE_LIMIT_LOCAL_CHECKS = Counter(
    "smallvision_rate_limit_local_checks_total",
    "Prediction requests whose key's rate was checked in this process's own buckets because "
    "the shared limiter's Redis did not answer.",
    registry=REGISTRY,
)
