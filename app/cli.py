"""Command line: `python -m app.cli migrate | run | worker`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from alembic.config import Config

from alembic import command
from app.core.config import PROJECT_ROOT, get_settings

logger = logging.getLogger("smallvision")

# How long Ctrl-C waits for the API and the worker to stop before it kills them.
SHUTDOWN_GRACE_SECONDS = 20.0


def migrate() -> None:
    """Apply every Alembic migration to the configured database."""
    get_settings().ensure_directories()
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def worker_command(*, concurrency: int = 1) -> list[str]:
    """The argv that starts a Celery worker consuming the training and default queues."""
    settings = get_settings()
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--queues", f"{settings.training_queue},{settings.default_queue}",
        "--concurrency", str(concurrency),
        "--loglevel", settings.log_level,
    ]  # fmt: skip


def api_command(*, host: str, port: int) -> list[str]:
    """The argv that starts the API with uvicorn."""
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", host, "--port", str(port)]


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()  # SIGTERM: uvicorn and Celery both shut down gracefully on it
    deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("pid %s did not stop in time; killing it", process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_all(*, host: str, port: int) -> int:
    """Migrate, then run the API and one Celery worker until Ctrl-C (or until one of them exits)."""
    migrate()
    settings = get_settings()
    print(
        f"smallvision: API on http://{host}:{port} (docs at /docs), worker on {settings.broker_url}"
        f"\n  database {settings.database_url}\n  Ctrl-C stops both.",
        flush=True,
    )
    # Own sessions: Ctrl-C reaches only this launcher, which stops the children in order.
    processes = [
        subprocess.Popen(worker_command(), start_new_session=True),
        subprocess.Popen(api_command(host=host, port=port), start_new_session=True),
    ]
    stopping = False

    def request_stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    while not stopping:
        exited = [p for p in processes if p.poll() is not None]
        if exited:
            exit_code = exited[0].returncode or 1
            logger.error("pid %s exited with %s; stopping", exited[0].pid, exited[0].returncode)
            break
        time.sleep(0.2)
    print("smallvision: stopping the API and the worker ...", flush=True)
    _stop(processes)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m app.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations")
    run = sub.add_parser("run", help="migrate, then run the API and a worker (local default)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    worker = sub.add_parser("worker", help="run a Celery worker on the training queue")
    worker.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)

    if args.command == "migrate":
        migrate()
        return 0
    if args.command == "run":
        return run_all(host=args.host, port=args.port)
    os.execv(sys.executable, worker_command(concurrency=args.concurrency))  # noqa: S606
    return 0  # pragma: no cover  (execv does not return)


if __name__ == "__main__":
    sys.exit(main())
