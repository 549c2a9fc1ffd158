# syntax=docker/dockerfile:1
# The service image: `docker build -t service:local .` (or `make image`, which
# fills in the OCI labels), run by docker-compose.yml and deploy/k8s/. Every
# Python package in it comes from uv.lock, each file checked against the hash
# the lock records. The base is pinned to an exact patch release of the newest
# Python the suite runs on (Dependabot proposes the next one); pin it by digest
# too before shipping (docs/container.md shows the one command).
# tests/deploy/test_dockerfile.py starts the service with this file's ENTRYPOINT, CMD, ENV and
# WORKDIR and runs its HEALTHCHECK, so what is written here is what is tested.

ARG PYTHON_IMAGE=python:3.13.14-slim-trixie

# --- builder: the locked dependencies, then the project, into a self-contained venv ---
FROM ${PYTHON_IMAGE} AS builder
# uv makes /opt/venv with the base image's Python (the final stage has the same
# one) and no pip, so the final image carries no installer. It compiles the
# bytecode here, once: the read-only root filesystem could not take it later.
# Copies, not hard links, out of the cache mount (another filesystem).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
# uv itself, at the version and with the hashes uv.lock lists for it.
COPY scripts/uv_requirement.py uv.lock ./
RUN python uv_requirement.py uv.lock > uv-requirement.txt \
    && pip install --no-cache-dir --require-hashes --no-deps -r uv-requirement.txt
# The dependencies before the code: this layer is rebuilt only when pyproject.toml
# or uv.lock change. --locked fails the build if they disagree; the cache mount
# keeps uv's downloads between builds without putting them into a layer.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project --extra tracing
# Then the project itself, installed as a package (not editable), built by the
# uv_build backend inside uv: nothing outside the lock is downloaded.
COPY README.md ./
COPY service/ ./service/
# With the tracing extra (OpenTelemetry SDK and OTLP exporter): tracing stays
# off until SERVICE_TRACING__ENABLED=true, and then needs no rebuild.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --extra tracing

# --- final: the venv, a non-root user, nothing else ---
FROM ${PYTHON_IMAGE}
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 service \
    && useradd --system --uid 10001 --gid service --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin service
COPY --from=builder /opt/venv /opt/venv
# The working directory holds only the sink's data directory: mount a volume
# there (compose: the `events` volume; k8s: an emptyDir) since the root
# filesystem is read-only at run time.
WORKDIR /app
RUN mkdir data && chown service:service data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    SERVICE_LOG__FORMAT=json \
    SERVICE_ADMIN__HOST=0.0.0.0 \
    SERVICE_PIPELINE__SINK_PATH=data/events.jsonl
USER 10001:10001
# 8080 public HTTP API, 8888 TCP line protocol, 8081 admin (/metrics): publish
# only the first two; Prometheus reaches the admin port on the private network.
EXPOSE 8080 8888 8081
# Exec form: the Python process is PID 1's direct command and receives SIGTERM,
# which starts the graceful shutdown (docs/contract.md) (a shell would swallow it).
# `python -m service` is the same as the `service` console script;
# PYTHONSAFEPATH keeps the working directory off sys.path.
STOPSIGNAL SIGTERM
# No curl in the image: the standard library asks /readyz on the configured port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SERVICE_HTTP__PORT', '8080') + '/readyz', timeout=2)"]
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve"]

# OCI annotations (https://github.com/opencontainers/image-spec/blob/main/annotations.md),
# last so a new commit changes no layer. `make image` and CI pass the real values.
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT"
