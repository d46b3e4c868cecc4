"""The backend plugin interface and the registry that finds backends by name.

Lifecycle (as Triton's python backend): a ``Backend`` is created once per worker process with the
framework settings, ``load`` turns a stored blob into a ``LoadedModel``, ``LoadedModel.run`` executes
one (possibly batched) call, ``LoadedModel.close`` releases it. Capabilities are class attributes.
The backend that runs scripts (TORCH: ``execution.models`` sends every script there) also
implements ``load_script``, whose ``LoadedScript`` calls an entry point by name.

Built-in backends are imported lazily on first use; third-party ones register through the
``aiworker.backends`` entry-point group (``NAME = "package.module:BackendClass"``).
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from aiworker.devices import Device
from aiworker.protocol.backend_names import BUILTIN_BACKENDS, known_backends, plugin_targets
from aiworker.protocol.errors import AIError, BackendUnavailable, ConfigError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import IONames


@dataclass(frozen=True)
class BackendOptions:
    """Framework settings shared by every backend (RedisAI's names)."""

    inter_op_parallelism: int = 0  # 0: the framework's default
    intra_op_parallelism: int = 0
    model_execution_timeout_ms: int = 0  # 0: no limit
    backend_memory_limit_mb: int = 0  # 0: no limit
    # Models and scripts that touch files or run other code are refused unless True (safety/).
    allow_file_ops: bool = False
    # Bytes a zipped model (a TF SavedModel) may unpack to; 0: no limit.
    max_model_extract_bytes: int = 4 << 30


@dataclass(frozen=True)
class ModelSpec:
    """What a backend needs besides the blob to load a model."""

    key: str
    device: Device
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    batchsize: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class LoadedModel(ABC):
    """A model ready to run on its device."""

    nbytes: int = 0  # approximate memory held, for the worker's cache bound
    version: str = ""  # the stored version it was loaded from (its digest), set by the loader

    @abstractmethod
    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run once; inputs and outputs are numpy arrays in the model's order."""

    def host_buffer(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """An uninitialized array for one input of a run, to be filled by the caller (a batch's
        rows and padding) and given to ``run``: memory the model's device copies from fastest,
        which ``run`` may use in place (so the caller gives it away). A fresh one per call: the
        outputs of the run may share its memory."""
        return np.empty(tuple(shape), np.dtype(dtype))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release framework resources (called when evicted from the cache)."""

    def io_names(self) -> IONames:
        """The input and output names the framework reports, as RedisAI listed them in AI.MODELGET
        META for a model stored without INPUTS/OUTPUTS; empty when it reports none."""
        return (), ()

    def batch_sizes(self, batchsize: int) -> list[int] | None:
        """The batch sizes (ascending) this model runs autobatched requests at: a batch is padded
        with zero rows up to the first that holds it, and each is warmed up before the first
        batch. None (the default): batches run at their exact size."""
        return None


def powers_of_two(batchsize: int) -> list[int]:
    """Batch sizes 1, 2, 4, ... below ``batchsize``, then ``batchsize``: a few shapes a framework
    can keep specialised code for (``LoadedModel.batch_sizes``)."""
    sizes = [1]
    while sizes[-1] * 2 < batchsize:
        sizes.append(sizes[-1] * 2)
    return [*sizes, batchsize] if batchsize > 1 else sizes


@dataclass(frozen=True)
class ScriptContext:
    """What a running script may reach besides its tensors (RedisAI 1.2's ``redis.*`` and
    ``redisAI.*`` calls inside TorchScript): Redis commands on the keys the request declared in
    KEYS, and stored models. Given by the worker for each SCRIPTEXECUTE."""

    keys: tuple[str, ...] = ()
    # Runs one Redis command (name and arguments) and returns its raw reply.
    redis_call: Callable[..., Any] | None = None
    # Runs the stored model at a key on tensors; returns its outputs.
    run_model: Callable[[str, Sequence[np.ndarray]], list[np.ndarray]] | None = None
    # aiworker's own keys (the worker's prefix): no script may reach them, whatever it declared
    keyspace: Keys = field(default_factory=Keys)
    # the declared keys only: a declared ``{tag}`` reaches no other key (``ScriptExecute``)
    exact_keys: bool = False


class LoadedScript(LoadedModel):
    """A compiled script: entry points called by name with RedisAI's signature
    ``fn(tensors: List[Tensor], keys: List[str], args: List[str])``.

    A ``LoadedModel`` so that the worker's model cache keeps and evicts scripts like models.
    """

    entry_points: tuple[str, ...] = ()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise AIError("a script is run by function name (SCRIPTEXECUTE)")

    @abstractmethod
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
        """Run entry point ``function``; ``n_outputs`` is how many outputs the caller stores
        (0: any number, as RedisAI); ``context`` what the script may call besides its tensors."""


class Backend(ABC):
    """A framework plugin. Subclasses set ``name`` and implement ``load``."""

    name: ClassVar[str]
    extra: ClassVar[str] = ""
    device_kinds: ClassVar[frozenset[str]] = frozenset({"CPU"})
    requires_io_names: ClassVar[bool] = False  # TF graphs need INPUTS/OUTPUTS node names

    def __init__(self, options: BackendOptions) -> None:
        self.options = options

    @classmethod
    def version(cls) -> str:
        """The framework's version string."""
        return ""

    @abstractmethod
    def load(self, blob: bytes, spec: ModelSpec) -> LoadedModel:
        """Turn a stored blob into a runnable model; raise ``AIError`` with a clear message."""

    def load_script(self, source: str, entry_points: Sequence[str], device: Device) -> LoadedScript:
        """Compile a script, checking its entry points (only the script backend has scripts)."""
        raise AIError(f"{self.name} backend does not run scripts")

    def check_device(self, device: Device) -> None:
        """Refuse device kinds this backend cannot run on."""
        if device.kind not in self.device_kinds:
            raise AIError(f"{self.name} backend does not support device {device.name}")


def _resolve(name: str, quiet: bool = False) -> type[Backend] | None:
    target, extra = BUILTIN_BACKENDS.get(name, ("", ""))
    if not target:
        target = plugin_targets().get(name, "")
    if not target:
        if quiet:
            return None
        raise AIError("unsupported backend")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if quiet:
            return None
        hint = f": pip install 'aiworker[{extra}]' (in a checkout: '.[{extra}]')" if extra else ""
        raise BackendUnavailable(f"backend {name} is not available ({exc}){hint}") from exc
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendUnavailable(f"{target} is not an aiworker Backend")
    return cls


def resolve_backend(name: str) -> type[Backend]:
    """The class of backend ``name``, imported now: ``BackendUnavailable`` (naming the extra to
    install) when its framework is missing, RedisAI's ``unsupported backend`` for unknown names."""
    cls = _resolve(name.upper())
    assert cls is not None
    return cls


class Registry:
    """Backend instances of one worker process, created on first use with shared options."""

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions()
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()
        # called after a backend is created (the worker publishes its heartbeat, which lists them)
        self.on_new: Callable[[], object] = lambda: None

    def get(self, name: str) -> Backend:
        name = name.upper()
        backend = self._backends.get(name)
        if backend is not None:
            return backend
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                cls = _resolve(name)
                assert cls is not None
                backend = self._backends[name] = cls(self.options)
                created = True
            else:
                created = False
        if created:
            self.on_new()
        return backend

    def preload(self, names: Sequence[str]) -> None:
        """Import and create the named backends now instead of on first use; an unknown name is
        a ``ConfigError`` that names it (RedisAI's bare ``unsupported backend`` did not)."""
        known = known_backends()
        for name in names:
            if name.upper() not in known:
                raise ConfigError(
                    f"preload: unsupported backend {name!r} (known: {', '.join(known)})"
                )
            self.get(name)

    def loaded(self) -> dict[str, str]:
        """Loaded backend names -> framework versions."""
        return {name: type(b).version() for name, b in sorted(self._backends.items())}
