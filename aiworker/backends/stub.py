"""A dependency-free backend for tests and demos: the blob is a small JSON program.

``{"op": "add"}`` adds its two inputs, ``"mul"`` multiplies them, ``"identity"`` echoes its inputs,
``"fail"`` raises ``message``, ``"first_row"`` returns only row 0 (a model that breaks batching);
``"sleep_ms"`` delays each run (to test timeouts, batching and crash recovery).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import numpy as np

from aiworker.backends.base import Backend, LoadedModel, ModelSpec
from aiworker.protocol.errors import AIError

_OPS: dict[str, Callable[[Sequence[np.ndarray]], list[np.ndarray]]] = {
    "add": lambda xs: [np.add(xs[0], xs[1])],
    "mul": lambda xs: [np.multiply(xs[0], xs[1])],
    "identity": lambda xs: [np.array(x) for x in xs],
    "first_row": lambda xs: [np.array(xs[0][:1])],
}


class StubModel(LoadedModel):
    def __init__(self, program: dict[str, object]) -> None:
        self.op = str(program.get("op", "identity"))
        self.sleep_s = float(program.get("sleep_ms", 0) or 0) / 1000  # type: ignore[arg-type]
        self.message = str(program.get("message", "stub failure"))
        if self.op not in _OPS and self.op != "fail":
            raise AIError(f"STUB: unknown op {self.op!r}")

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.op == "fail":
            raise AIError(self.message)
        if self.op in ("add", "mul") and len(inputs) != 2:
            raise AIError(f"STUB {self.op} expects 2 inputs, got {len(inputs)}")
        return _OPS[self.op](inputs)


class StubBackend(Backend):
    name = "STUB"

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
        return StubModel(program)
