"""Command line: `python -m app.cli migrate | run | worker | keys create|list|revoke |
export-onnx | export-edge | storage-orphans`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from types import FrameType

from alembic.config import Config

from alembic import command
from app.core.config import PROJECT_ROOT, get_settings
from app.core.errors import AppError

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
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--queues",
        f"{settings.training_queue},{settings.default_queue}",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        settings.log_level,
    ]


def api_command(*, host: str, port: int) -> list[str]:
    """The argv that starts the API with uvicorn."""
    from app.api.server import PROTOCOL

    return [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        host,
        "--port",
        str(port),
        "--http",
        PROTOCOL,
    ]


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


def create_key(*, name: str, owner: str, scopes: list[str]) -> str:
    """Create an API key and return it (the only time it is shown)."""
    from app.db.session import session_scope
    from app.services import auth

    with session_scope() as session:
        return auth.create_key(session, name=name, owner=owner, scopes=scopes).key


def _bootstrap_key() -> str | None:
    """On a store with no API key at all, an admin key for the person who just ran `make run`."""
    from app.db.session import session_scope
    from app.services import auth

    with session_scope() as session:
        if auth.list_keys(session):
            return None
    return create_key(name="bootstrap (make run)", owner="admin", scopes=["admin"])


def _keys_command(args: argparse.Namespace) -> int:
    from app.db.session import session_scope
    from app.services import auth

    if args.keys_command == "create":
        owner = args.owner or args.name
        print(create_key(name=args.name, owner=owner, scopes=args.scopes.split(",")))
        return 0
    with session_scope() as session:
        if args.keys_command == "list":
            for row in auth.list_keys(session):
                state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                print(
                    f"{row.id}  sv_{row.prefix}_...  {','.join(row.scopes):<20} {state:<18} "
                    f"owner={row.owner}  {row.name}"
                )
            return 0
        row = auth.revoke_key(session, key_id=args.key_id)
        print(f"revoked {row.id} ({row.name})")
    return 0


def _export_onnx_command(*, name: str | None, version: int | None) -> int:
    """Export each stored version without an ONNX file; 1 if any export failed."""
    from app.ml.export import ExportError
    from app.services import exports

    if version is not None and name is None:
        print("error: --version needs --name", file=sys.stderr)
        return 2
    failed = 0
    refs = exports.stored_versions(name=name, version=version)
    if not refs:
        print("no stored versions matched", file=sys.stderr)
        return 1 if name is not None else 0
    for ref in refs:
        try:
            exported = exports.add_onnx_export(ref)
        except (ExportError, AppError) as exc:
            failed += 1
            print(f"{ref.name} v{ref.version}: FAILED: {exc}", file=sys.stderr)
            continue
        if exported is None:
            print(f"{ref.name} v{ref.version}: has an ONNX export already")
        else:
            print(
                f"{ref.name} v{ref.version}: exported in {exported['seconds']} s, "
                f"max difference from Keras {exported['max_abs_difference']:.1e}"
            )
    return 1 if failed else 0


def _export_edge_command(*, name: str | None, version: int | None, formats: list[str]) -> int:
    """Build and check the formats for devices of stored versions; 1 if any failed."""
    from app.services import exports
    from app.services.exports import DownloadFormat

    if version is not None and name is None:
        print("error: --version needs --name", file=sys.stderr)
        return 2
    try:
        wanted = [DownloadFormat(f) for f in formats]
    except ValueError:
        names = ", ".join(sorted(f.value for f in exports.EDGE_FORMATS))
        print(f"error: --formats takes {names}", file=sys.stderr)
        return 2
    if not set(wanted) <= exports.EDGE_FORMATS:
        print("error: --formats takes only formats for devices", file=sys.stderr)
        return 2
    refs = exports.stored_versions(name=name, version=version)
    if not refs:
        print("no stored versions matched", file=sys.stderr)
        return 1 if name is not None else 0
    failed = 0
    for ref in refs:
        for fmt in wanted:
            built, now = exports.build_now(ref, fmt, worker_id=f"cli/{os.getpid()}")
            check = built.report or {}
            if built.status != "ready":
                failed += built.status == "failed"
                print(f"{ref.name} v{ref.version} {fmt}: {built.status}: {built.error or ''}")
                continue
            degraded = " DEGRADED" if check.get("degraded") else ""
            when = "built" if now else "built before"
            print(
                f"{ref.name} v{ref.version} {fmt}: {when}: {built.size_bytes} bytes, accuracy "
                f"{check.get('accuracy', 0):.4f} (float {check.get('float_accuracy', 0):.4f}), "
                f"agreement {check.get('agreement', 0):.4f} on {check.get('images')} "
                f"{check.get('evaluated_on')} images{degraded}"
            )
    return 1 if failed else 0


def run_all(*, host: str, port: int) -> int:
    """Migrate, then run the API and one Celery worker until Ctrl-C (or until one of them exits)."""
    migrate()
    settings = get_settings()
    print(
        f"smallvision: console on http://{host}:{port}/ui, API on http://{host}:{port} (docs "
        f"at /docs), worker on {settings.broker_url}"
        f"\n  database {settings.database_url}\n  Ctrl-C stops both.",
        flush=True,
    )
    if (key := _bootstrap_key()) is not None:
        print(
            f"\n  First start: an admin API key was created. It is shown only now:\n\n    {key}\n"
            "\n  Send it as 'Authorization: Bearer <key>'. More keys:"
            "\n    .venv/bin/python -m app.cli keys create --name <who> --owner <user> "
            "--scopes train,predict\n",
            flush=True,
        )
    else:
        print(
            "  API keys: .venv/bin/python -m app.cli keys create --name <who> --owner <user> "
            "--scopes admin|train|predict[,...]",
            flush=True,
        )
    # Own sessions: Ctrl-C reaches only this launcher, which stops the children in order.
    processes = [
        subprocess.Popen(worker_command(), start_new_session=True),
        subprocess.Popen(api_command(host=host, port=port), start_new_session=True),
    ]
    stopping = False

    def request_stop(_signum: int, _: FrameType | None) -> None:
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


def _orphans_command(*, delete: bool, grace_seconds: float) -> int:
    from app.services.orphans import find_orphans, remove_orphans

    found = find_orphans(grace_seconds=grace_seconds)
    for orphan in found:
        print(f"{orphan.area}/{orphan.prefix}\t{orphan.objects} objects\t{orphan.size_bytes} bytes")
    if delete:
        remove_orphans(found)
    verb = "removed" if delete else "found"
    print(f"{len(found)} orphaned folders or files {verb}", file=sys.stderr)
    return 0


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
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument(
        "--owner",
        help="the user or team whose data the key reaches (default: --name); "
        "keys of one owner share datasets, jobs and models",
    )
    create.add_argument(
        "--scopes", default="train,predict", help="comma-separated: admin, train, predict"
    )
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=uuid.UUID)
    export = sub.add_parser(
        "export-onnx", help="add an ONNX export to stored versions that have none"
    )
    export.add_argument("--name", help="only this model (default: every model)")
    export.add_argument("--version", type=int, help="only this version of --name")
    edge = sub.add_parser(
        "export-edge",
        help="build and check the formats for devices (TFLite, int8) of stored versions",
    )
    edge.add_argument("--name", help="only this model (default: every model)")
    edge.add_argument("--version", type=int, help="only this version of --name")
    edge.add_argument(
        "--formats",
        default="tflite,tflite_fp16,tflite_int8,onnx_int8",
        help="comma-separated (default: all four)",
    )
    orphans = sub.add_parser(
        "storage-orphans",
        help="list stored files no database row accounts for (left by a crash); --delete "
        "removes them",
    )
    orphans.add_argument("--delete", action="store_true", help="remove what is listed")
    orphans.add_argument(
        "--grace-seconds",
        type=float,
        default=3600.0,
        help="leave files changed more recently than this (an upload may be publishing them)",
    )
    args = parser.parse_args(argv)

    if args.command == "migrate":
        migrate()
        return 0
    if args.command == "run":
        return run_all(host=args.host, port=args.port)
    if args.command == "keys":
        try:
            return _keys_command(args)
        except (ValueError, AppError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "export-onnx":
        return _export_onnx_command(name=args.name, version=args.version)
    if args.command == "export-edge":
        return _export_edge_command(
            name=args.name,
            version=args.version,
            formats=[f.strip() for f in args.formats.split(",") if f.strip()],
        )
    if args.command == "storage-orphans":
        return _orphans_command(delete=args.delete, grace_seconds=args.grace_seconds)
    os.execv(sys.executable, worker_command(concurrency=args.concurrency))  # noqa: S606
    return 0  # pragma: no cover  (execv does not return)


if __name__ == "__main__":
    sys.exit(main())
