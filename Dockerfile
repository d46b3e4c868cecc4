# aiworker worker image. torch is always installed (TORCH_SPEC below); pick the other backends'
# frameworks with --build-arg EXTRAS=onnx, tf, tflite or several, comma-separated (default: all).
FROM python:3.11-slim

ARG EXTRAS=all
# The PyTorch release to install (the Makefile's TORCH_SPEC), and the index it comes from:
# PyTorch's CPU-only wheels by default, as PyPI's torch for Linux x86_64 is the CUDA build (GBs
# of nvidia-* wheels). For a GPU image pass TORCH_INDEX_URL=https://pypi.org/simple (PyPI's CUDA
# build; docker-compose.yml's worker-gpu does) or https://download.pytorch.org/whl/cuXYZ for
# another CUDA version.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 aiworker
WORKDIR /app
COPY pyproject.toml README.md ./
COPY aiworker ./aiworker
COPY config ./config

# The same install steps as `make install` (tests/test_deployment.py keeps them in step), torch
# from TORCH_INDEX_URL: the next step finds it installed and keeps it.
RUN python -m pip install -q --upgrade pip \
 && python -m pip install -q --index-url="${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
 && python -m pip install -q ".[${EXTRAS}]"

USER aiworker
ENV AIWORKER_REDIS_URL=redis://redis:6379/0
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["aiworker", "check", "--this-host"]
# Arguments (a compose service's `command`, `docker run IMAGE ...`) are aiworker's: `worker
# --device CPU`, `gateway ...`, `status`; never "aiworker" again.
ENTRYPOINT ["aiworker"]
CMD ["worker"]
