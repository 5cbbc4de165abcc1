# syntax=docker/dockerfile:1
# sdstack trainer: LoRA training and dataset tagging (gRPC 50052, metrics 9102); also runs the training Jobs.
# Build from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t sdstack/trainer:0.1.0 .
# CUDA runtime base (the driver comes from the node); Python 3.11 from the deadsnakes
# archive, because Ubuntu 22.04 ships 3.10 and sdstack needs 3.11. Base images are pinned
# to exact versions; deploy/README.md says how to pin their digests too.

FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04 AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and pinned (SPEC §2): from PyPI on Linux x86_64 this is the CUDA build.
RUN pip install torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY gateway ./gateway
COPY sdstack ./sdstack
RUN pip install . \
 && python -m services.common.sd.clip_tokenizer /opt/sdstack/clip

FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04
LABEL org.opencontainers.image.title="sdstack-trainer" \
      org.opencontainers.image.source="deploy/docker/trainer.Dockerfile" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 sdstack \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/sdstack --create-home \
      --shell /usr/sbin/nologin sdstack \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/sdstack/clip /opt/sdstack/clip
COPY deploy/docker/healthcheck.py /opt/sdstack/healthcheck.py
# NVML (GPU metrics) needs the driver's "utility" capability, CUDA the "compute" one.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/data/hf \
    SDSTACK_HOST=0.0.0.0 \
    SDSTACK_DATA_DIR=/data \
    SDSTACK_CLIP_TOKENIZER_DIR=/opt/sdstack/clip/tokenizer \
    SDSTACK_LOG_FORMAT=json
WORKDIR /data
USER 10001:10001
EXPOSE 50052 9102
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
  CMD ["python", "/opt/sdstack/healthcheck.py", "trainer"]
ENTRYPOINT ["python", "-m", "services.trainer.server"]
