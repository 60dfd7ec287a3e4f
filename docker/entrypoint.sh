#!/bin/sh
# Entry point of the smallvision image:
#   api     apply migrations, then serve the API with uvicorn on 0.0.0.0:${PORT:-8000}
#   worker  run a Celery worker on the training queue (one job at a time, one child per job)
#   migrate apply migrations and exit
#   *       run the given command as it is
set -eu

case "${1:-api}" in
    api)
        python -m app.cli migrate
        exec python -m uvicorn app.main:app --host 0.0.0.0 --port "${PORT:-8000}" \
            --workers "${API_WORKERS:-1}" --proxy-headers --http app.api.server:HeaderTimeoutProtocol
        ;;
    worker)
        exec python -m app.cli worker --concurrency "${WORKER_CONCURRENCY:-1}"
        ;;
    migrate)
        exec python -m app.cli migrate
        ;;
    *)
        exec "$@"
        ;;
esac
