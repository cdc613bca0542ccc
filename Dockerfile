# LUMEN Factory on a GPU node: the image that cluster/kuberay-rayjob.yaml runs (cluster/README.md).
#
#   docker build -t ghcr.io/lumen-factory/factory:latest .
#
# Two stages. The build stage has the CUDA toolkit (nvcc) and compiles mmcv 2.1.0 with its ops
# once (there is no wheel for torch 2.13), exactly as `make setup` does on a laptop; the runtime
# stage gets the finished virtualenv and no compiler. The repository lives at /app, the
# virtualenv at /app/.venv (the same path in both stages: a venv is not relocatable).
ARG CUDA_VERSION=12.8.1
ARG UBUNTU=ubuntu22.04

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
      build-essential git make ninja-build libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
# mmcv's CUDA ops for the GPUs the factory targets (A100 8.0, A10G/L4 8.6/8.9, H100/H200 9.0)
ENV MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
RUN make setup PY_SYS=python3.11 WHEELHOUSE=/wheels MAX_JOBS=8

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU}
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/app/.venv/bin:$PATH \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 make libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app /app
# fail the build, not the first job, if the environment is incomplete
RUN python -c "import torch, mmcv.ops, mmseg, ray, diffusers, factory, downstream; print('image ok')"
CMD ["python", "-m", "factory.jobs.generate", "--help"]
