"""The Celery worker application: `celery -A worker.celery_app worker -Q training`."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init, worker_ready

from app.core.config import get_settings
from app.core.logging import configure_logging
from app.core.queue import make_celery
from app.db.session import dispose_engines

settings = get_settings()
configure_logging(settings.log_level, json_logs=settings.log_json)
settings.ensure_directories()

celery_app = make_celery(settings)
celery_app.conf.include = ["worker.tasks"]
app = celery_app  # the name `celery -A worker.celery_app` looks for


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _forget_parent_connections(**_: Any) -> None:
    # A forked child must open its own database connections, never reuse the parent's sockets.
    dispose_engines(close=False)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _requeue_orphaned_jobs(sender: Any, **_: Any) -> None:
    """Jobs this worker was running when it died go back to the queue and run again."""
    from app.services import jobs, training

    try:
        for job_id in training.orphaned_jobs(hostname=sender.hostname):
            logging.getLogger(__name__).warning("re-queueing job %s left by a dead worker", job_id)
            jobs.enqueue_job(job_id=job_id)
    finally:
        dispose_engines()
