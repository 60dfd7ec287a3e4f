"""Running jobs on a worker.

- `lifecycle`: claiming a job once, running its method, recording how it ended, and putting
  back the jobs of workers that died.
- `run`: one training run: data, settings, training, curves, the model saved and registered.
- `ownership`: the conditions every write of a run is made under (the job still runs on this
  worker; nobody asked to cancel it before its version is registered).
"""

from app.services.training.lifecycle import (
    METHOD_RUNNERS,
    claim_job,
    finish_job,
    orphaned_jobs,
    run_job,
)
from app.services.training.ownership import (
    JobCancelledError,
    JobTakenOverError,
    allow_registration,
    ensure_still_owned,
)
from app.services.training.run import pretrained_source

__all__ = [
    "METHOD_RUNNERS",
    "JobCancelledError",
    "JobTakenOverError",
    "allow_registration",
    "claim_job",
    "ensure_still_owned",
    "finish_job",
    "orphaned_jobs",
    "pretrained_source",
    "run_job",
]
