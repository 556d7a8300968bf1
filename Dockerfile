# syntax=docker/dockerfile:1
# One image for every Warren service; the command picks the service:
#   docker run warren edge | cat-relay | runner | excel-worker
# Every service serves /healthz, /readyz and /metrics on port 8000 inside the container.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/warren
COPY pyproject.toml README.md ./
COPY warren ./warren
COPY shared ./shared
COPY services ./services
RUN /opt/warren/bin/pip install --no-compile . \
    && /opt/warren/bin/python -m compileall -q /opt/warren/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="warren" \
      org.opencontainers.image.description="Warren: Tornado services over RabbitMQ pushing live events to WebSocket clients"
RUN groupadd --system --gid 10001 warren \
    && useradd --system --uid 10001 --gid warren --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin warren \
    && mkdir -p /data/exports \
    && chown warren:warren /data/exports
COPY --from=build /opt/warren /opt/warren
ENV PATH=/opt/warren/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WARREN_EDGE_PORT=8000 \
    WARREN_RELAY_PORT=8000 \
    WARREN_RUNNER_PORT=8000 \
    WARREN_EXCEL_PORT=8000 \
    WARREN_EXPORTS_DIR=/data/exports
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
VOLUME ["/data/exports"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["warren"]
CMD ["edge"]
