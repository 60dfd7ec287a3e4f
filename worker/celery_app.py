"""The Celery worker application: `celery -A worker.celery_app worker -Q training`."""

from __future__ import annotations

import logging

from app.core.config import get_settings
from app.core.queue import make_celery

settings = get_settings()
logging.basicConfig(
    level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
)
settings.ensure_directories()

celery_app = make_celery(settings)
celery_app.conf.include = ["worker.tasks"]
app = celery_app  # the name `celery -A worker.celery_app` looks for
