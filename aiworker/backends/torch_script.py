"""TorchScript scripts with RedisAI's entry points: compiled from source, checked, called by name.

An entry point has RedisAI's signature ``fn(tensors: List[Tensor], keys: List[str], args:
List[str])`` and returns a tensor, or a list or tuple of tensors. The checks and their messages are
RedisAI's (SCRIPTSTORE), and ``compile_script`` is usable without a worker: the client runs it
before storing a script when torch is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from aiworker.backends import torch_redis_ops
from aiworker.backends.base import LoadedScript, ScriptContext
from aiworker.backends.forward_threads import FORWARD_THREADS, worth_handing_off
from aiworker.backends.safety.torch_ops import check_code_shape
from aiworker.backends.torch_common import (
    TORCH_ERRORS,
    check_host_type,
    to_torch_all,
    torch_error_text,
)
from aiworker.backends.util import check_run_time, clock
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError

# RedisAI's entry-point signature: argument types, as TorchScript spells them.
SIGNATURE = ("List[Tensor]", "List[str]", "List[str]")


def compile_script(source: str, entry_points: Sequence[str]) -> torch.jit.CompilationUnit:
    """Compile TorchScript source and check every entry point (RedisAI's messages and order).
    Source nested or chained past what the compiler's stack takes is refused first."""
    check_code_shape(source, "the script")
    try:
        unit = torch.jit.CompilationUnit()
        # bare redis.* / redisAI.* name RedisAI's ops (torch_redis_ops), as RedisAI resolved them
        unit.define(source, rcb=torch_redis_ops.resolve)
    except RuntimeError as exc:  # the compiler's message on one line, as RedisAI passed it on
        raise AIError(str(exc).replace("\n", " ")) from None
    for name in entry_points:
        function = unit.find_function(name)
        if function is None:
            raise AIError(messages.SCRIPT_NO_FUNCTION.format(name=name))
        arguments = function.schema.arguments
        if len(arguments) != len(SIGNATURE):
            raise AIError(messages.SCRIPT_ARITY.format(name=name, count=len(arguments)))
        if tuple(str(a.type) for a in arguments) != SIGNATURE:
            raise AIError(messages.SCRIPT_SIGNATURE.format(name=name))
    return unit


def _takes_redisai_signature(function: Any) -> bool:
    return tuple(str(a.type) for a in function.schema.arguments) == SIGNATURE


def _outputs(result: Any, function: str, n_outputs: int) -> list[torch.Tensor]:
    """The tensors a call returned, flattened as RedisAI did (tensor, list, or tuple)."""
    if n_outputs == 0:  # nothing is stored, so RedisAI did not look at the result
        return []
    # n_outputs < 0: whatever the call returned (a DAG op checks the count itself)
    if isinstance(result, torch.Tensor):
        tensors = [result]
    elif isinstance(result, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in result):
        tensors = list(result)
    else:
        raise AIError(messages.SCRIPT_NON_TENSOR.format(name=function))
    if n_outputs >= 0 and len(tensors) != n_outputs:
        raise AIError(messages.SCRIPT_OUTPUT_COUNT.format(name=function))
    return tensors


class TorchScript(LoadedScript):
    """A compiled script on one device."""

    def __init__(
        self, source: str, entry_points: Sequence[str], device: torch.device, limit_ms: int = 0
    ) -> None:
        self.unit = compile_script(source, entry_points)
        self.entry_points = tuple(entry_points)
        self.device = device
        self.limit_ms = limit_ms
        self.nbytes = len(source)
        self._call_s: float | None = None  # the last call's time (None: none yet)

    def call(
        self,
        function: str,
        tensors: Sequence[np.ndarray],
        keys: Sequence[str],
        args: Sequence[str],
        n_outputs: int,
        variadic: int | None = None,
        context: ScriptContext | None = None,
    ) -> list[np.ndarray]:
        """Call ``function``. A script stored without entry points (deprecated AI.SCRIPTSET) may
        have any function called, with tensors given positionally as AI.SCRIPTRUN did; inputs from
        ``variadic`` on (SCRIPTRUN's ``$``) then form one List[Tensor] argument. On the CPU a
        call that took long enough last time runs on the forward threads (as a TORCH
        model's forward: ``forward_threads``)."""
        call = (function, tensors, keys, args, n_outputs, variadic, context)
        if self.device.type == "cpu" and worth_handing_off(self._call_s):
            outputs, took = FORWARD_THREADS.run(self._call, *call)
        else:
            outputs, took = self._call(*call)
        self._call_s = took
        return outputs  # type: ignore[no-any-return]

    def _call(
        self,
        function: str,
        tensors: Sequence[np.ndarray],
        keys: Sequence[str],
        args: Sequence[str],
        n_outputs: int,
        variadic: int | None,
        context: ScriptContext | None,
    ) -> tuple[list[np.ndarray], float]:
        """``call`` where it runs: its outputs, and how long it took (seconds)."""
        compiled = self.unit.find_function(function)
        legacy = not self.entry_points
        if compiled is None or not (legacy or function in self.entry_points):
            raise AIError(messages.SCRIPT_FUNCTION_MISSING.format(name=function))
        inputs = to_torch_all(tensors, self.device)
        started = clock()
        with torch_redis_ops.calling(context):
            try:
                with torch.inference_mode():
                    if variadic is not None:
                        result = compiled(*inputs[:variadic], inputs[variadic:])
                    elif legacy and not _takes_redisai_signature(compiled):
                        result = compiled(*inputs)
                    else:
                        result = compiled(inputs, list(keys), list(args))
            except TORCH_ERRORS as exc:
                # an op's own text first: the script failed with it (TorchScript cannot catch)
                raise AIError(torch_redis_ops.raised_text() or torch_error_text(exc)) from None
        check_run_time(started, self.limit_ms)
        outputs = []
        for n, tensor in enumerate(_outputs(result, function, n_outputs)):
            check_host_type(tensor, n)
            outputs.append(tensor.detach().contiguous().cpu().numpy())
        return outputs, clock() - started
