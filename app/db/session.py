"""Engine and sessions: one engine per database URL, sessions that commit or roll back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from app.core.config import get_settings


def _enable_sqlite_foreign_keys_and_wal(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # SQLite ignores FOREIGN KEY clauses unless asked; WAL lets the API read while a worker writes.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


_engines: dict[str, Engine] = {}
_session_factories: dict[str, sessionmaker[Session]] = {}


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _enable_sqlite_foreign_keys_and_wal)
        return engine
    # pre_ping: a PostgreSQL restart must not leave the pool full of dead connections;
    # connect_timeout: an unreachable server fails a request instead of hanging it.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        connect_args={"connect_timeout": 5},
    )


def engine_for(url: str) -> Engine:
    """A pooled engine for `url`, created once per process."""
    if url not in _engines:
        _engines[url] = _create_engine(url)
    return _engines[url]


def dispose_engines(*, close: bool = True) -> None:
    """Forget every engine. close=False in a forked child: drop the inherited pool without
    closing connections that still belong to the parent process."""
    for engine in _engines.values():
        engine.dispose(close=close)
    _engines.clear()
    _session_factories.clear()


def get_engine() -> Engine:
    """The engine for the configured DATABASE_URL."""
    return engine_for(get_settings().database_url)


def _session_factory(url: str) -> sessionmaker[Session]:
    if url not in _session_factories:
        _session_factories[url] = sessionmaker(bind=engine_for(url), expire_on_commit=False)
    return _session_factories[url]


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits when the block ends and rolls back if it raises; then, the
    commit done, what was registered with after_commit runs (what it raises comes out of
    the block, with the rows committed)."""
    session = _session_factory(get_settings().database_url)()
    try:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        _run_committed(session)
    finally:
        session.close()


_AFTER_COMMIT = "after_commit_callbacks"
_COMMITTED = "committed_callbacks"
_AFTER_ROLLBACK = "after_rollback_callbacks"


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run `callback` once this session's transaction has committed (when its session_scope
    ends), and never if it rolls back: files are removed and tasks enqueued only for rows that
    exist for good. The callback may not use `session` (it opens another if it must)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def after_rollback(session: Session, callback: Callable[[], object]) -> None:
    """Run `callback` if this session's transaction is rolled back (a failed commit too)
    instead of committed: files published for rows that will not exist go again."""
    session.info.setdefault(_AFTER_ROLLBACK, []).append(callback)


@event.listens_for(Session, "after_commit")
def _note_committed(session: Session) -> None:
    # Run once commit() has returned (session_scope), not inside it: a callback that raises
    # here would leave the session half way through its commit, with nothing to roll back.
    session.info.pop(_AFTER_ROLLBACK, None)
    session.info.setdefault(_COMMITTED, []).extend(session.info.pop(_AFTER_COMMIT, []))


def _run_committed(session: Session) -> None:
    for callback in session.info.pop(_COMMITTED, []):
        callback()


@event.listens_for(Session, "after_soft_rollback")
def _run_after_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    if previous_transaction.nested:  # a savepoint: the transaction itself goes on
        return
    session.info.pop(_AFTER_COMMIT, None)
    for callback in session.info.pop(_AFTER_ROLLBACK, []):
        callback()
