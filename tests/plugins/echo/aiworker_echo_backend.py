"""ECHO: a third-party aiworker backend. The model blob is a number; a run multiplies every input
by it and returns them in order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aiworker.backends.base import Backend, LoadedModel, ModelSpec
from aiworker.protocol.errors import AIError


class EchoModel(LoadedModel):
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(x * self.factor, dtype=x.dtype) for x in inputs]


class EchoBackend(Backend):
    name = "ECHO"

    @classmethod
    def version(cls) -> str:
        return "echo 1.0"

    def load(self, blob: bytes, spec: ModelSpec) -> LoadedModel:
        self.check_device(spec.device)
        try:
            return EchoModel(float(blob.decode()))
        except (UnicodeDecodeError, ValueError):
            raise AIError("ECHO: the model blob must be a number") from None
