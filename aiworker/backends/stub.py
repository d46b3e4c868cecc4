"""A dependency-free backend for tests and demos: the blob is a small JSON program.

``{"op": "add"}`` adds its two inputs, ``"mul"`` multiplies them, ``"identity"`` echoes its inputs,
``"fail"`` raises ``message``, ``"nonnegative"`` echoes its inputs but fails on a negative value
(a model one request's input can make fail), ``"first_row"`` returns only row 0 (a model that
breaks batching);
``"sleep_ms"`` delays each run (to test timeouts, batching and crash recovery), ``"row_ms"`` each
run by its rows (a model whose cost grows with the batch), ``"load_ms"`` each load; ``"pad": true`` asks for autobatched batches padded to powers of two (and warmed up).
A loaded model records the rows of each run (``rows``) and the backend counts its loads, so that
tests can see what a worker ran.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import numpy as np

from aiworker.backends.base import Backend, LoadedModel, ModelSpec, powers_of_two
from aiworker.protocol.errors import AIError

_OPS: dict[str, Callable[[Sequence[np.ndarray]], list[np.ndarray]]] = {
    "add": lambda xs: [np.add(xs[0], xs[1])],
    "mul": lambda xs: [np.multiply(xs[0], xs[1])],
    "identity": lambda xs: [np.array(x) for x in xs],
    "first_row": lambda xs: [np.array(xs[0][:1])],
    "nonnegative": lambda xs: [np.array(x) for x in xs],
}


class StubModel(LoadedModel):
    def __init__(self, program: dict[str, object]) -> None:
        self.op = str(program.get("op", "identity"))
        self.sleep_s = float(program.get("sleep_ms", 0) or 0) / 1000  # type: ignore[arg-type]
        self.row_s = float(program.get("row_ms", 0) or 0) / 1000  # type: ignore[arg-type]
        self.message = str(program.get("message", "stub failure"))
        self.pad = bool(program.get("pad", False))
        self.rows: list[int] = []  # the first dimension of each run's first input
        if self.op not in _OPS and self.op != "fail":
            raise AIError(f"STUB: unknown op {self.op!r}")

    def batch_sizes(self, batchsize: int) -> list[int] | None:
        return powers_of_two(batchsize) if self.pad else None

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        self.rows.append(inputs[0].shape[0] if inputs and inputs[0].ndim else 0)
        if self.sleep_s or self.row_s:
            time.sleep(self.sleep_s + self.row_s * self.rows[-1])
        if self.op == "fail":
            raise AIError(self.message)
        if self.op == "nonnegative" and any(bool((x < 0).any()) for x in inputs):
            raise AIError("STUB: negative input")
        if self.op in ("add", "mul") and len(inputs) != 2:
            raise AIError(f"STUB {self.op} expects 2 inputs, got {len(inputs)}")
        return _OPS[self.op](inputs)


class StubBackend(Backend):
    name = "STUB"
    loads = 0  # models loaded by every instance in this process

    @classmethod
    def version(cls) -> str:
        return "1"

    def load(self, blob: bytes, spec: ModelSpec) -> LoadedModel:
        self.check_device(spec.device)
        try:
            program = json.loads(blob)
        except (UnicodeDecodeError, ValueError):
            raise AIError("STUB: model blob is not a JSON program") from None
        if not isinstance(program, dict):
            raise AIError("STUB: model blob is not a JSON program")
        StubBackend.loads += 1
        time.sleep(float(program.get("load_ms", 0) or 0) / 1000)
        return StubModel(program)
