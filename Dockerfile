# aiworker worker image. Pick the backends with --build-arg EXTRAS=torch,onnx (default: all).
FROM python:3.11-slim

ARG EXTRAS=all
# The PyTorch build to install; the CPU wheel by default (pass a CUDA build for GPU images).
ARG TORCH_SPEC=torch==2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 aiworker
WORKDIR /app
COPY pyproject.toml README.md ./
COPY aiworker ./aiworker
COPY config ./config

# The same install steps as `make install` (tests/test_deployment.py keeps them in step).
RUN python -m pip install -q --upgrade pip \
 && python -m pip install -q "${TORCH_SPEC}" \
 && python -m pip install -q ".[${EXTRAS}]"

USER aiworker
ENV AIWORKER_REDIS_URL=redis://redis:6379/0
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["aiworker", "check", "--this-host"]
ENTRYPOINT ["aiworker"]
CMD ["worker"]
