# syntax=docker/dockerfile:1
#
# jwt-gateway container image: slim Python, non-root, only the runtime venv in the final stage.
#
#   docker build -t jwt-gateway .
#   docker run --rm -p 8080:8080 \
#       -v "$PWD/gateway.yaml:/etc/jwt-gateway/gateway.yaml:ro" jwt-gateway
#
# The image ships no config: mount one at /etc/jwt-gateway/gateway.yaml (a ConfigMap in
# Kubernetes, see config/kubernetes/sidecar.yaml). Secrets go in files (secret_file) or the
# environment (${VAR}), never in the image. `docker stop` sends SIGTERM: the gateway stops
# accepting, lets in-flight requests finish within proxy.shutdown_timeout, then exits; give
# `docker stop --time` more than that timeout.

# Both stages use the same base image: the venv's bin/python is a symlink to the base's
# interpreter, so it only works on the image it was created on. 3.11: the interpreter the test
# suite and the benchmarks run on (the hardened protocol leans on uvicorn and asyncio details).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ----------------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# .dockerignore lets through only pyproject.toml, README.md, LICENSE and gateway/: no tests,
# no benchmarks, no local venv or caches.
COPY . .

# A wheel of the project (the build backend is fetched into an isolated build env and stays
# in this stage), then a venv with the wheel and its runtime dependencies only: no [dev]
# extras. --only-binary: every dependency must come as a wheel, so nothing is compiled and no
# compiler is needed; a dependency without a wheel for this platform fails the build loudly.
# The venv gets no pip of its own: the build stage's pip installs into it.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --only-binary=:all: /wheels/*.whl \
    && /opt/venv/bin/jwt-gateway --version

# --------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="jwt-gateway" \
      org.opencontainers.image.description="Reverse-proxy JWT gateway: verifies Bearer tokens, enforces per-route claim rules, forwards verified claims as headers." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A fixed, non-root uid/gid (10001), so Kubernetes' runAsNonRoot can verify it and file
# permissions on mounted secrets can be granted to it (fsGroup). No home, no login shell.
# /etc/jwt-gateway is where the config is mounted; it belongs to root and is read-only for
# the gateway.
RUN groupadd --system --gid 10001 jwtgw \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin jwtgw \
    && mkdir -p /etc/jwt-gateway

# The venv is all the final stage takes from the build stage (bytecode compiled at install
# time, so a read-only root filesystem costs nothing at startup).
COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /

# 8080: the proxied port (listen.port). 9901: the admin port (admin.port) with /healthz,
# /readyz and /metrics; it binds 127.0.0.1 by default, which is enough for HEALTHCHECK (it runs
# inside the container). Set admin.host: 0.0.0.0 for Kubernetes probes or Prometheus.
EXPOSE 8080 9901

# Liveness of the process, not readiness (/readyz waits for keys). Python, not curl: the slim
# image has no curl. No proxy handler: an HTTP(S)_PROXY in the environment must not capture a
# loopback probe. JWT_GATEWAY_HEALTH_URL overrides the URL when admin.port is changed.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open(os.environ.get('JWT_GATEWAY_HEALTH_URL', 'http://127.0.0.1:9901/healthz'), timeout=2); sys.exit(0 if r.status == 200 else 1)"]

# SIGTERM (docker stop, Kubernetes) drains; SIGHUP reloads the config. Exec form: the gateway
# is PID 1 and receives the signals itself, no shell in between.
STOPSIGNAL SIGTERM
ENTRYPOINT ["jwt-gateway"]
CMD ["serve", "--config", "/etc/jwt-gateway/gateway.yaml"]
