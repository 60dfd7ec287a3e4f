# One image for the API and the training workers.
#   docker build -t smallvision .                              # CPU TensorFlow
#   docker build --build-arg TF_FLAVOUR=gpu -t smallvision:gpu . # NVIDIA workers (CUDA from PyPI)
# ONNX Runtime Web, for the console's "run in this browser": its npm package at the versions
# app/console/package-lock.json pins.
FROM node:20-slim AS console
WORKDIR /console
COPY app/console/package.json app/console/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

FROM python:3.11-slim AS base

ARG TF_FLAVOUR=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SMALLVISION_DATA_DIR=/data \
    SMALLVISION_PRETRAINED_WEIGHTS_DIR=/weights \
    KERAS_HOME=/data/keras

WORKDIR /srv/smallvision

# Dependencies first, so code changes do not reinstall TensorFlow.
COPY pyproject.toml README.md ./
RUN mkdir -p app worker models_store smallvision \
    && touch app/__init__.py worker/__init__.py models_store/__init__.py smallvision/__init__.py \
    && pip install ".[${TF_FLAVOUR}]" \
    && pip uninstall -y smallvision

COPY app ./app
# the three files of it the API serves at /ui/vendor/
COPY --from=console /console/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs \
     /console/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs \
     /console/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm \
     ./app/console/node_modules/onnxruntime-web/dist/
COPY worker ./worker
COPY models_store ./models_store
COPY smallvision ./smallvision
COPY alembic ./alembic
COPY alembic.ini ./
COPY docker/entrypoint.sh /usr/local/bin/smallvision-entrypoint
RUN pip install --no-deps . \
    && chmod 0755 /usr/local/bin/smallvision-entrypoint \
    && useradd --system --uid 10001 --home-dir /srv/smallvision smallvision \
    && mkdir -p /data /cache /weights \
    && chown -R smallvision:smallvision /data /cache

USER smallvision
# Node-local: scratch space and the cache of objects downloaded from the bucket.
VOLUME ["/data", "/cache"]
EXPOSE 8000

# Liveness of the API; compose overrides it for workers (which serve no HTTP).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1

ENTRYPOINT ["smallvision-entrypoint"]
CMD ["api"]
