"""Thin Celery tasks: they take ids and call the services, which hold the logic."""

from __future__ import annotations

import os
import uuid

from celery import Task

from app.core.queue import ANALYSE_DATASET, BUILD_EXPORT, RUN_TRAINING_JOB
from app.services import exports, training
from app.services.labeling import analyses
from worker.celery_app import celery_app


def _worker_id(task: Task) -> str:
    return f"{task.request.hostname}/{os.getpid()}"


@celery_app.task(name=RUN_TRAINING_JOB, bind=True)  # type: ignore[untyped-decorator]
def run_training_job(self: Task, job_id: str) -> None:
    """Run the training job `job_id` in this (single-use) worker child process."""
    training.run_job(job_id=uuid.UUID(job_id), worker_id=_worker_id(self))


@celery_app.task(name=BUILD_EXPORT, bind=True)  # type: ignore[untyped-decorator]
def build_export(self: Task, export_id: str) -> None:
    """Build the model export `export_id` (a SavedModel archive of a version)."""
    exports.run_export(export_id=uuid.UUID(export_id), worker_id=_worker_id(self))


@celery_app.task(name=ANALYSE_DATASET, bind=True)  # type: ignore[untyped-decorator]
def analyse_dataset(self: Task, analysis_id: str) -> None:
    """Compute the dataset analysis `analysis_id` (features and answers for labeling help)."""
    analyses.run_analysis(analysis_id=uuid.UUID(analysis_id), worker_id=_worker_id(self))
