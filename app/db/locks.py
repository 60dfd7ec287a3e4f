"""Transaction-long locks on a name (an owner, a model name), so that check-then-write
sequences (count an owner's jobs then insert one; read a model's versions then add or switch
one) are one atomic step even across API processes and workers.

Take the lock FIRST in the transaction: everything read after it is current.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.orm import Session


def owner_jobs_key(owner: str | None) -> str:
    """One owner's jobs: counting those queued or running and adding one; deleting a
    dataset those jobs may use."""
    return f"owner-jobs:{owner}"


def model_name_key(name: str) -> str:
    """One model name: claiming it, and registering, activating and deleting its versions."""
    return f"model-name:{name}"


def dataset_lineage_key(lineage_id: object) -> str:
    """One dataset's versions: numbering and adding the next one."""
    return f"dataset-lineage:{lineage_id}"


def review_queue_key(owner_folder: str) -> str:
    """One owner's review queue (named by the owner's folder of review images, which is all
    that a file in it tells): adding items and dropping the oldest past its limits, and
    removing image files no item refers to any more."""
    return f"review-queue:{owner_folder}"


def _lock_id(key: str) -> int:
    """A signed 64-bit number for the key (PostgreSQL advisory locks are keyed by bigint)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


def lock_key(session: Session, key: str) -> None:
    """Hold a lock on `key` until this transaction ends (commit or rollback).

    PostgreSQL: an advisory transaction lock, so only transactions on the same key wait.
    SQLite: a write statement, which takes the database's single write lock (SQLite has no
    finer lock; other writers wait up to the busy timeout, readers are not blocked).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _lock_id(key)})
    else:
        session.execute(text("UPDATE model_names SET name = name WHERE 1 = 0"))
