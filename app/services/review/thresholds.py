"""Review thresholds: below a model name's threshold, its predictions are kept for review."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import NotFoundError
from app.db.locks import lock_key, model_name_key
from app.db.models import ModelName
from app.db.session import after_commit, session_scope
from app.services.auth import Principal


class _Thresholds:
    """Every model name's review threshold, read from the database at most once per
    MODEL_REFRESH_SECONDS in each process (and at once after this process changed one), so a
    prediction of a model without a threshold costs no database work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: tuple[float, dict[str, float]] | None = None

    def cached(self, name: str) -> tuple[bool, float | None]:
        """(whether the cache is fresh, the name's threshold in it); never reads the database."""
        with self._lock:
            entry = self._loaded
        if entry is None or time.monotonic() - entry[0] > get_settings().model_refresh_seconds:
            return False, None
        return True, entry[1].get(name)

    def get(self, name: str) -> float | None:
        """The name's threshold, reading them all again if the cache is stale."""
        fresh, threshold = self.cached(name)
        if fresh:
            return threshold
        with session_scope() as session:
            rows = session.execute(
                select(ModelName.name, ModelName.review_threshold).where(
                    ModelName.review_threshold.is_not(None)
                )
            )
            thresholds = {row_name: float(value) for row_name, value in rows}
        with self._lock:
            self._loaded = (time.monotonic(), thresholds)
        return thresholds.get(name)

    def forget(self) -> None:
        with self._lock:
            self._loaded = None


THRESHOLDS = _Thresholds()


def set_threshold(
    session: Session, *, name: str, threshold: float | None, principal: Principal
) -> ModelName:
    """Set (or with None, clear) the review threshold of one of the caller's model names;
    NotFoundError for names of other owners and unknown ones."""
    lock_key(session, model_name_key(name))
    row = get_model_name(session, name=name, principal=principal)
    row.review_threshold = threshold
    # Forgotten once committed, so that this process reads the new value at once.
    after_commit(session, THRESHOLDS.forget)
    return row


def get_model_name(session: Session, *, name: str, principal: Principal) -> ModelName:
    row = session.get(ModelName, name, populate_existing=True)
    if row is None or not principal.can_see(row.owner):
        raise NotFoundError(f"model {name!r} not found")
    return row
