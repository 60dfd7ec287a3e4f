"""Thin Celery tasks: they take ids and call the services, which hold the logic."""

from __future__ import annotations

import os
import uuid

from celery import Task

from app.core.queue import RUN_TRAINING_JOB
from app.services import training
from worker.celery_app import celery_app


@celery_app.task(name=RUN_TRAINING_JOB, bind=True)  # type: ignore[untyped-decorator]
def run_training_job(self: Task, job_id: str) -> None:
    """Run the training job `job_id` in this (single-use) worker child process."""
    training.run_job(job_id=uuid.UUID(job_id), worker_id=f"{self.request.hostname}/{os.getpid()}")
