"""``aiworker.Client``: redisai-py's API on stock Redis (a ``redis.Redis`` subclass).

Tensors, models and statistics are plain hash reads and writes; ``modelexecute`` appends a job to the
model's device stream and waits for the worker's reply on a private list, in one round trip (XADD
and BLPOP pipelined). Errors RedisAI reported as server errors raise ``ResponseError`` subclasses
with RedisAI's messages.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import redis

from aiworker.backends.base import io_name_backends, io_names_optional, known_backends
from aiworker.client.dag import Dag
from aiworker.client.deprecated import DeprecatedCommands
from aiworker.client.verify import check_script_source
from aiworker.devices import parse_device
from aiworker.parser import parse_modelexecute, parse_scriptexecute
from aiworker.protocol import messages
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.errors import AIError, JobTimedOut, WrongTypeError
from aiworker.protocol.keys import DEFAULT_PREFIX, Keys
from aiworker.protocol.replies import decode_reply, raise_for_reply
from aiworker.protocol.requests import Request
from aiworker.settings import Settings
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store
from aiworker.storage import stats, tensor_io
from aiworker.storage import tensor as codec
from aiworker.storage.connection import install_packer
from aiworker.storage.redis_options import client_kwargs

# AI.CONFIG names -> (Settings field, smallest allowed value; None for text).
CONFIG_NAMES: dict[str, tuple[str, int | None]] = {
    "MODEL_CHUNK_SIZE": ("model_chunk_size", 1),
    "BACKENDSPATH": ("backends_path", None),
    "THREADS_PER_QUEUE": ("threads_per_queue", 1),
    "MODEL_EXECUTION_TIMEOUT": ("model_execution_timeout", 0),
    "INTER_OP_PARALLELISM": ("inter_op_parallelism", 0),
    "INTRA_OP_PARALLELISM": ("intra_op_parallelism", 0),
    "BACKEND_MEMORY_LIMIT": ("backend_memory_limit", 0),
}


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value.decode() if isinstance(value, bytes) else value]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in value]


class Client(DeprecatedCommands, redis.Redis):
    """Drop-in for ``redisai.Client``: every redis-py command plus the RedisAI methods.

    ``prefix`` names aiworker's own keys (must match the workers'); ``reply_timeout`` (seconds)
    bounds how long ``modelexecute`` waits for a worker (``None``: as long as it takes).
    """

    def __init__(
        self,
        *args: Any,
        prefix: str = DEFAULT_PREFIX,
        reply_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        install_packer(self)
        self.keyspace = Keys(prefix)
        self.reply_timeout = reply_timeout
        self._devices: dict[str, str] = {}
        self._devices_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Client:  # type: ignore[override]
        own = {k: kwargs.pop(k) for k in ("prefix", "reply_timeout") if k in kwargs}
        pool = redis.ConnectionPool.from_url(url, **kwargs)
        client = cls(connection_pool=pool, **own)
        client.auto_close_connection_pool = True
        return client

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Client:
        """A client for ``settings.redis_url`` with its prefix and TLS files."""
        kwargs = {**client_kwargs(settings), **kwargs}
        return cls.from_url(settings.redis_url, prefix=settings.prefix, **kwargs)

    # tensors ---------------------------------------------------------------------------------

    def tensorset(
        self,
        key: str,
        tensor: np.ndarray | Sequence[Any] | int | float | None,
        shape: Sequence[int] | None = None,
        dtype: str | None = None,
    ) -> str:
        """Store a tensor from a numpy array, or from values with ``shape`` and ``dtype``."""
        array = codec.as_array(tensor, dtype=dtype, shape=shape)
        tensor_io.write(self, key, array)
        return "OK"

    def tensorget(
        self,
        key: str,
        as_numpy: bool = True,
        as_numpy_mutable: bool = False,
        meta_only: bool = False,
    ) -> np.ndarray | dict[str, Any]:
        """A numpy array (read-only unless ``as_numpy_mutable``), or RedisAI's meta/values dict."""
        if meta_only:
            dtype, shape = tensor_io.read_meta(self, key)
            return {"dtype": dtype, "shape": list(shape)}
        array = tensor_io.read(self, key)
        if as_numpy_mutable:
            return np.array(array, copy=True)
        if as_numpy:
            return array
        return {
            "dtype": codec.dtype_of(array),
            "shape": list(array.shape),
            "values": codec.to_values(array),
        }

    def _check_writable(self, key: str, kind: str) -> None:
        """RedisAI refuses to overwrite a key that holds another kind of value."""
        try:
            current = self.hget(key, "kind")
        except redis.ResponseError:
            raise WrongTypeError() from None
        if current is not None and current.decode() != kind:  # type: ignore[union-attr]
            raise WrongTypeError()
        if current is None and self.exists(key):
            raise WrongTypeError()

    # models ----------------------------------------------------------------------------------

    def modelstore(
        self,
        key: str,
        backend: str,
        device: str,
        data: bytes | bytearray | memoryview,
        batch: int | None = None,
        minbatch: int | None = None,
        minbatchtimeout: int | None = None,
        tag: str | None = None,
        inputs: str | Sequence[str] | None = None,
        outputs: str | Sequence[str] | None = None,
    ) -> str:
        """Store a model blob (split into MODEL_CHUNK_SIZE fields) atomically."""
        if data is None or (hasattr(data, "__len__") and len(data) == 0):
            raise AIError(messages.MODEL_NO_BLOB)
        in_names, out_names = _as_list(inputs), _as_list(outputs)
        io_backends = io_name_backends()
        if not in_names and not out_names and io_names_optional(backend, data):
            # a zipped TF SavedModel names its inputs and outputs in its serving signature
            io_backends = [b for b in io_backends if b != backend.upper()]
        name, device_name = model_store.validate_meta(
            backend,
            device,
            known_backends=known_backends(),
            io_backends=io_backends,
            batchsize=batch or 0,
            minbatchsize=minbatch or 0,
            minbatchtimeout=minbatchtimeout or 0,
            inputs=in_names,
            outputs=out_names,
        )
        self._check_writable(key, model_store.KIND_MODEL)
        meta = model_store.ModelMeta(
            backend=name,
            device=device_name,
            tag=tag or "",
            batchsize=batch or 0,
            minbatchsize=minbatch or 0,
            minbatchtimeout=minbatchtimeout or 0,
            inputs=tuple(in_names),
            outputs=tuple(out_names),
        )
        model_store.store_model(self, self.keyspace, key, meta, data, self.model_chunk_size())
        with self._devices_lock:
            self._devices[key] = parse_device(device_name).queue
        return "OK"

    def modelget(self, key: str, meta_only: bool = False) -> dict[str, Any]:
        """RedisAI's MODELGET fields as a dict, with ``blob`` unless ``meta_only``."""
        if meta_only:
            meta = model_store.read_meta(self, key)
            blob = None
        else:
            meta, blob = model_store.read_model(self, key)
        result: dict[str, Any] = {
            "backend": meta.backend,
            "device": meta.device,
            "tag": meta.tag,
            "batchsize": meta.batchsize,
            "minbatchsize": meta.minbatchsize,
            "inputs": list(meta.inputs),
            "outputs": list(meta.outputs),
            "minbatchtimeout": meta.minbatchtimeout,
        }
        if blob is not None:
            result["blob"] = blob
        return result

    def modeldel(self, key: str) -> str:
        model_store.delete_model(self, self.keyspace, key)
        with self._devices_lock:
            self._devices.pop(key, None)
        return "OK"

    def modelscan(self) -> list[list[str]]:
        """``[key, tag]`` of every stored model (RedisAI's AI._MODELSCAN)."""
        return [[key, tag] for key, tag in model_store.scan_models(self, self.keyspace)]

    def modelexecute(
        self,
        key: str,
        inputs: str | Sequence[str],
        outputs: str | Sequence[str],
        timeout: int | None = None,
    ) -> str:
        """Run a model through a worker; returns ``"OK"`` once outputs are stored."""
        in_names, out_names = _as_list(inputs), _as_list(outputs)
        tokens = [key, "INPUTS", str(len(in_names)), *in_names, "OUTPUTS", str(len(out_names))]
        tokens += out_names
        if timeout is not None:
            tokens += ["TIMEOUT", str(timeout)]
        request = parse_modelexecute(tokens)
        return self.submit(self._model_queue(key), request)

    def _model_queue(self, key: str) -> str:
        """The device queue of a model; cached, since workers forward jobs that reach the wrong one."""
        return self._cached_queue(key, lambda: model_store.read_meta(self, key).device)

    def _cached_queue(self, key: str, read_device: Callable[[], str]) -> str:
        with self._devices_lock:
            queue = self._devices.get(key)
        if queue is None:
            queue = parse_device(read_device()).queue
            with self._devices_lock:
                self._devices[key] = queue
        return queue

    # scripts ---------------------------------------------------------------------------------

    def scriptstore(
        self,
        key: str,
        device: str,
        script: str | bytes,
        entry_points: str | Sequence[str],
        tag: str | None = None,
    ) -> str:
        """Store a TorchScript script with its entry points (RedisAI's AI.SCRIPTSTORE).

        Where torch is installed the source is compiled and its entry points checked first, with
        RedisAI's messages; otherwise the worker reports the same errors at the first run.
        """
        return self._scriptstore(key, device, script, _as_list(entry_points), tag)

    def _scriptstore(
        self,
        key: str,
        device: str,
        script: str | bytes,
        entry_points: list[str],
        tag: str | None,
        legacy: bool = False,
    ) -> str:
        device_name, source, names = script_store.validate(device, script, entry_points, legacy)
        check_script_source(source, names)
        self._check_writable(key, script_store.KIND_SCRIPT)
        script_store.store_script(self, self.keyspace, key, device_name, source, names, tag or "")
        with self._devices_lock:
            self._devices[key] = parse_device(device_name).queue
        return "OK"

    def scriptget(self, key: str, meta_only: bool = False) -> dict[str, Any]:
        """``device``, ``tag``, ``entry_points`` and (unless ``meta_only``) ``source``."""
        meta, source = script_store.read_script(self, key)
        result: dict[str, Any] = {
            "device": meta.device,
            "tag": meta.tag,
            "entry_points": list(meta.entry_points),
        }
        if not meta_only:
            result["source"] = source
        return result

    def scriptdel(self, key: str) -> str:
        script_store.delete_script(self, self.keyspace, key)
        with self._devices_lock:
            self._devices.pop(key, None)
        return "OK"

    def scriptscan(self) -> list[list[str]]:
        """``[key, tag]`` of every stored script (RedisAI's AI._SCRIPTSCAN)."""
        return [[key, tag] for key, tag in script_store.scan_scripts(self, self.keyspace)]

    def scriptexecute(
        self,
        key: str,
        function: str,
        keys: str | Sequence[str] | None = None,
        inputs: str | Sequence[str] | None = None,
        args: str | Sequence[str] | None = None,
        outputs: str | Sequence[str] | None = None,
        timeout: int | None = None,
    ) -> str:
        """Run a script's entry point through a worker; ``"OK"`` once outputs are stored."""
        tokens = [key, function]
        for scope, values in (("KEYS", keys), ("INPUTS", inputs), ("ARGS", args)):
            names = _as_list(values)
            if names:
                tokens += [scope, str(len(names)), *names]
        out_names = _as_list(outputs)
        if out_names:
            tokens += ["OUTPUTS", str(len(out_names)), *out_names]
        if timeout is not None:
            tokens += ["TIMEOUT", str(timeout)]
        request = parse_scriptexecute(tokens)
        return self.submit(self._script_queue(key), request)

    def _script_queue(self, key: str) -> str:
        """The device queue of a script (cached, as for models)."""
        return self._cached_queue(key, lambda: script_store.read_meta(self, key).device)

    # jobs ------------------------------------------------------------------------------------

    def submit(self, device: str, request: Request) -> str:
        """Enqueue ``request`` on a device queue and wait for its reply (one round trip)."""
        return raise_for_reply(self.submit_reply(device, request))

    def submit_reply(self, device: str, request: Request) -> dict[str, Any]:
        """Like ``submit``, but return the worker's whole reply (a DAG's per-op results)."""
        reply_key = self.keyspace.reply(uuid.uuid4().hex)
        deadline = time.monotonic() + self.reply_timeout if self.reply_timeout else None
        pipe = self.pipeline(transaction=False)
        pipe.xadd(self.keyspace.queue(device), encode_entry(request, reply_key))  # type: ignore[arg-type]
        pipe.blpop([reply_key], timeout=self._blpop_wait(self.reply_timeout))
        _, popped = pipe.execute()
        while popped is None:  # waits are sliced: see _blpop_wait
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise JobTimedOut(f"no reply from a worker within {self.reply_timeout}s")
            popped = self.blpop([reply_key], timeout=self._blpop_wait(remaining))
        return decode_reply(popped[1])  # type: ignore[index]

    def _blpop_wait(self, wanted: float | None) -> float:
        """One BLPOP's timeout: at most ``wanted`` and short enough for the socket read timeout
        (redis-py 8 sets 5 s by default; a longer BLPOP would fail with TimeoutError,
        drop the connection and abandon the reply). Half of it leaves room for Redis serving
        blocking timeouts up to 1/hz (100 ms) late."""
        socket_timeout = self.connection_pool.connection_kwargs.get("socket_timeout")
        limit = 1.0 if not socket_timeout else min(1.0, socket_timeout / 2)
        wait = limit if not wanted else min(wanted, limit)
        return max(wait, 0.01)  # Redis reads a BLPOP timeout below 1 ms as 0: block forever

    def dag(
        self,
        load: str | Sequence[str] | None = None,
        persist: str | Sequence[str] | None = None,
        routing: str | None = None,
        timeout: int | None = None,
        readonly: bool = False,
    ) -> Dag:
        """A DAG builder (AI.DAGEXECUTE): chain ``tensorset``, ``tensorget``, ``modelexecute``,
        ``scriptexecute``, then ``execute()`` for the per-op results."""
        return Dag(self, load, persist, routing, timeout, readonly)

    # statistics and configuration ------------------------------------------------------------

    def infoget(self, key: str) -> dict[str, Any]:
        """RedisAI's AI.INFO fields, summed over every worker process."""
        return stats.info(self, self.keyspace, key)

    def inforeset(self, key: str) -> str:
        stats.reset(self, self.keyspace, key)
        return "OK"

    def config(self, name: str, value: str | int | None = None) -> str | int | None:
        """RedisAI's AI.CONFIG: ``config(name)`` reads, ``config(name, value)`` sets (for every
        client, and for workers started afterwards)."""
        upper = name.upper()
        if upper not in CONFIG_NAMES:
            raise AIError("unsupported subcommand")
        field_name, minimum = CONFIG_NAMES[upper]
        if value is None:
            stored = self.hget(self.keyspace.config, upper)
            if stored is None:
                default = getattr(Settings(), field_name)
                return None if default == "" else default  # type: ignore[no-any-return]
            text = stored.decode()  # type: ignore[union-attr]
            return text if minimum is None else int(text)
        if minimum is not None:
            try:
                value = int(value)
            except (TypeError, ValueError):
                value = minimum - 1
            if value < minimum:
                if upper == "MODEL_CHUNK_SIZE":
                    raise AIError("MODEL_CHUNK_SIZE: invalid chunk size")
                raise AIError(f"{upper}: invalid value")
        self.hset(self.keyspace.config, upper, value)
        return "OK"

    def model_chunk_size(self) -> int:
        value = self.config("MODEL_CHUNK_SIZE")
        return int(value) if value is not None else Settings().model_chunk_size
