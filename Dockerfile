# One image for every profilemesh component; the command picks it (profilemesh-profile, profilemesh-reporting,
# profilemesh-aggregator, profilemesh-gateway). See docs/deploying.md.
#
# BASE is any Debian-like image with python3 (3.11+) and its venv module. The default is the official slim
# image; where no registry is reachable, build a local one (localdev/image.py does, with debootstrap).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# pip settings may come in as build arguments (e.g. PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels for an offline
# build from prebuilt wheels); they live in this stage only.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/profilemesh
WORKDIR /src
# The pinned runtime dependencies first: this layer is reused until requirements.txt changes.
COPY requirements.txt ./
RUN /opt/profilemesh/bin/pip install --quiet -r requirements.txt
# Then profilemesh itself; its build (setup.py) generates the gRPC code from protos/ with grpc_tools.
COPY pyproject.toml setup.py README.md ./
COPY protos protos
COPY common common
COPY profile_svc profile_svc
COPY reporting_svc reporting_svc
COPY aggregator_svc aggregator_svc
COPY gateway gateway
COPY profilemesh_cli profilemesh_cli
COPY profilemesh profilemesh
RUN /opt/profilemesh/bin/pip install --quiet --no-deps . \
    && /opt/profilemesh/bin/pip uninstall --quiet --yes pip setuptools \
    && /opt/profilemesh/bin/python -m compileall -q /opt/profilemesh

FROM ${BASE}
LABEL org.opencontainers.image.title="profilemesh" \
      org.opencontainers.image.description="Profiles and reports as gRPC microservices over a Redis-compatible cluster, with a REST gateway" \
      org.opencontainers.image.source="https://github.com/profilemesh/profilemesh" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# Only the virtual environment crosses over: no compiler, no pip, no build tools, no source tree.
COPY --from=build /opt/profilemesh /opt/profilemesh
ENV PATH=/opt/profilemesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# A numeric non-root user: no passwd entry needed, and Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /tmp
# gRPC services, the gateway, then the metrics ports.
EXPOSE 50051 50052 50053 8080 9101 9102 9103 9104
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["python3", "-m", "common.runtime.probe"]
CMD ["profilemesh-gateway"]
