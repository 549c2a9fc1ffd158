# syntax=docker/dockerfile:1
# The service image: `docker build -t service:local .`, run by docker-compose.yml
# and deploy/k8s/. The base is pinned to an exact patch release; pin it by digest
# too before shipping (docs/container.md shows the one command).
# tests/deploy/test_dockerfile.py starts the service with this file's ENTRYPOINT, CMD, ENV and
# WORKDIR and runs its HEALTHCHECK, so what is written here is what is tested.

ARG PYTHON_IMAGE=python:3.13.9-slim-bookworm

# --- builder: resolve and install the dependencies into a self-contained venv ---
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The venv has no pip of its own (the base image's pip installs into it with
# --python), so the final image carries no installer. pip compiles the
# bytecode here, once: the read-only root filesystem could not take it later.
RUN python -m venv --without-pip /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ ./service/
# With the tracing extra (OpenTelemetry SDK and OTLP exporter): tracing stays
# off until SERVICE_TRACING__ENABLED=true, and then needs no rebuild.
RUN pip --python /opt/venv/bin/python install --no-cache-dir "./[tracing]"

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
