"""Readiness checks: can this process reach its database, its broker and its storage now?"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from kombu.connection import Connection
from sqlalchemy import text

from app.core.config import get_settings
from app.db.session import engine_for, get_engine
from app.services.storage import get_storage

# Shared by all readiness probes; a hung check occupies a thread only until its own timeout.
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readiness")


def check_database() -> None:
    """Run `SELECT 1` on the configured database."""
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


def check_broker() -> None:
    """A round trip to the configured broker: PING for Redis, SELECT 1 on the embedded
    SQL broker's database (kombu opens that one lazily, so a channel alone proves nothing)."""
    settings = get_settings()
    timeout = settings.readiness_timeout_seconds
    if settings.uses_embedded_broker:
        with engine_for(settings.broker_url.removeprefix("sqla+")).connect() as connection:
            connection.execute(text("SELECT 1"))
        return
    broker = Connection(settings.broker_url, connect_timeout=timeout)  # type: ignore[no-untyped-call]
    with broker as connection:
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=timeout
        )
        channel = connection.default_channel
        client = getattr(channel, "client", None)
        if client is not None and hasattr(client, "ping"):
            client.ping()


def _outcome(check: Callable[[], None], timeout: float) -> str:
    future = _executor.submit(check)
    try:
        future.result(timeout=timeout)
    except FutureTimeout:
        return f"no answer within {timeout:g} s"
    except Exception as exc:
        # The probe reports every failure as a reason instead of failing itself.
        return f"{type(exc).__name__}: {exc}"[:500]
    return "ok"


def database_status() -> str:
    """ "ok", or why the database does not answer (bounded in time)."""
    return _outcome(check_database, get_settings().readiness_timeout_seconds)


def check_storage() -> None:
    """The datasets' store answers: the folder is writable, or the bucket exists and these
    credentials may use it (the other areas are folders or prefixes beside it)."""
    get_storage().datasets.check()


def readiness() -> dict[str, str]:
    """{"database", "broker", "storage"}: "ok" or why not, each check bounded in time."""
    timeout = get_settings().readiness_timeout_seconds
    return {
        "database": database_status(),
        "broker": _outcome(check_broker, timeout),
        "storage": _outcome(check_storage, timeout),
    }
