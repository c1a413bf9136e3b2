# Lethe: one image for the API, the unlearning worker and the bootstrap job.
# CPU torch by default; for a GPU worker build with
#   --build-arg TORCH_SPEC="torch==2.13.0" --build-arg TORCH_INDEX_URL=<your CUDA wheel index>
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LETHE_DATA_DIR=/data

WORKDIR /srv/lethe

# The torch version is pinned by TORCH_SPEC, which hadolint cannot see through.
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else \
      pip install --no-cache-dir "$TORCH_SPEC"; \
    fi

COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY bench ./bench
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 lethe \
    && mkdir -p /data \
    && chown lethe:lethe /data

USER 10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--no-access-log"]
