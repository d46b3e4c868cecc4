"""Checks the client runs before storing, where the framework is importable in its process.

RedisAI compiled scripts and loaded models when they were stored, and refused what did not compile
or load, with the framework's message. The client does the same here when it can import the
framework; otherwise it asks a live worker (MODELVERIFY, SCRIPTVERIFY: ``job_ops._checked``) or
stores with a warning. Frameworks are imported only here, on first use, never by
``import aiworker``.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiworker.backends.base import BackendOptions, ModelSpec, resolve_backend
from aiworker.devices import parse_device
from aiworker.protocol.errors import AIError, BackendUnavailable
from aiworker.protocol.requests import IONames


class UnverifiedModelWarning(UserWarning):
    """A model was stored without being loaded first: no framework here, no live worker."""


class UnverifiedScriptWarning(UserWarning):
    """A script was stored without being compiled first: no torch here, no live worker."""


def check_script_source(source: str, entry_points: Sequence[str]) -> bool:
    """Compile a script and check its entry points where torch is installed, as RedisAI did at
    SCRIPTSTORE (raising ``AIError`` with its messages). False when torch is missing here: the
    worker then reports the same errors when it first loads the script."""
    try:
        from aiworker.backends import torch_script
    except ImportError:
        return False
    torch_script.compile_script(source, entry_points)
    return True


def verify_model(
    backend: str,
    blob: bytes | bytearray | memoryview,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    batchsize: int = 0,
) -> IONames | None:
    """Load the blob with its backend in this process and drop it again: the input and output
    names its framework reports when it loaded (``LoadedModel.io_names``), None when the
    backend's framework cannot be imported here; ``AIError`` with the backend's (RedisAI's)
    message when it does not load. The load uses the CPU: a model stored for a GPU
    is checked for being loadable, and the worker reports a missing GPU when it runs."""
    try:
        cls = resolve_backend(backend.upper())
    except BackendUnavailable:
        return None
    spec = ModelSpec(
        key="",
        device=parse_device("CPU"),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        batchsize=batchsize,
    )
    try:
        model = cls(BackendOptions()).load(bytes(memoryview(blob).cast("B")), spec)
    except AIError:
        raise
    except Exception as exc:  # a framework error the backend did not translate
        raise AIError(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)) from None
    names = model.io_names()
    model.close()
    return names
