# syntax=docker/dockerfile:1
# Kyma's container image: one image for every part (`kyma serve core|bridge|all`).
#   docker build -t kyma .
#   docker run -p 8000:8000 kyma                      # core and bridge, SQLite, the demo model
# Settings come from KYMA_* variables and an optional config file (KYMA_CONFIG); mount the
# model catalogue and point KYMA_CATALOG at it. deploy/compose.yaml runs a whole cluster.
# The install steps are deploy/image/install-kyma, which the test suite runs as well.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: Kyma's wheel and a wheel of every dependency ----------------------------------
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core_service core_service
COPY http_bridge http_bridge
COPY generated generated
COPY deploy/image/install-kyma /usr/local/bin/install-kyma
RUN install-kyma wheels /wheels

# --- the image: a virtual environment from those wheels, nothing else ------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="Kyma" \
      org.opencontainers.image.description="One OpenAI-compatible endpoint for open-source AI models: the core (gRPC) and the HTTP bridge."
COPY deploy/image/install-kyma /usr/local/bin/install-kyma
# The wheels are mounted from the builder for this step only: no layer keeps them.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    install-kyma venv /opt/kyma /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/kyma --create-home kyma
ENV PATH=/opt/kyma/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KYMA_DATA_DIR=/var/lib/kyma \
    KYMA_HTTP_HOST=0.0.0.0 \
    KYMA_GRPC_HOST=0.0.0.0 \
    KYMA_METRICS_HOST=0.0.0.0 \
    KYMA_BRIDGE_METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/kyma
VOLUME ["/var/lib/kyma"]
# HTTP (bridge), gRPC (core), Prometheus metrics (core, bridge).
EXPOSE 8000 50051 9464 9465
# Checks what this container serves: the core's gRPC health, the bridge's /healthz, or both.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["kyma", "health"]
# kyma serve drains in-flight requests on SIGTERM (KYMA_SHUTDOWN_GRACE_SECONDS).
STOPSIGNAL SIGTERM
ENTRYPOINT ["kyma"]
CMD ["serve", "all"]
