"""Celery with a Redis broker and result backend, running the same TorchScript model."""

from __future__ import annotations

import io
import os

import numpy as np
from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    task_default_queue="bench",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
_model = None


def model():  # type: ignore[no-untyped-def]
    global _model
    if _model is None:
        import torch

        with open(os.environ["BENCH_MODEL"], "rb") as handle:
            _model = torch.jit.load(io.BytesIO(handle.read()))
    return _model


@app.task(name="bench.add")
def add(a: list[float], b: list[float], shape: list[int]) -> list[float]:
    import torch

    x = torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(shape))
    y = torch.from_numpy(np.asarray(b, dtype=np.float32).reshape(shape))
    with torch.inference_mode():
        return model()(x, y).reshape(-1).tolist()  # type: ignore[no-any-return]
