# syntax=docker/dockerfile:1
# sdstack gallery: stored outputs with their parameters (gRPC 50053, metrics 9103).
# Build from the repository root:
#   docker build -f deploy/docker/gallery.Dockerfile -t sdstack/gallery:0.1.0 .
# Slim Debian base, pinned to an exact Python release; deploy/README.md says how to pin
# its digest too. No GPU: the gallery never imports torch, but the package depends on it,
# so the CPU build of the same pinned torch keeps the image small.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY gateway ./gateway
COPY sdstack ./sdstack
RUN pip install .

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="sdstack-gallery" \
      org.opencontainers.image.source="deploy/docker/gallery.Dockerfile" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 sdstack \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/sdstack --create-home \
      --shell /usr/sbin/nologin sdstack \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/sdstack/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SDSTACK_HOST=0.0.0.0 \
    SDSTACK_DATA_DIR=/data \
    SDSTACK_LOG_FORMAT=json
WORKDIR /data
USER 10001:10001
EXPOSE 50053 9103
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "/opt/sdstack/healthcheck.py", "gallery"]
ENTRYPOINT ["python", "-m", "services.gallery.server"]
