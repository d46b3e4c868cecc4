"""redisai-py 1.3's public methods, defined once for both clients.

Each method checks its arguments as redisai-py did and hands an ``ops.Op`` to ``self._run``: the
blocking ``Client`` runs it and returns the result, ``aiworker.asyncio.Client`` returns an
awaitable. Results are redisai-py's post-processed ones, or RedisAI's raw replies with
``enable_postprocess=False``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from aiworker.client import job_ops, model_ops, ops, script_ops
from aiworker.client.dag import Dag
from aiworker.client.deprecated import deprecated_call
from aiworker.client.ops import Op, State


class AICommands:
    """The RedisAI methods; a client supplies ``_state`` and ``_run``."""

    _state: State

    def _run(self, op: Op) -> Any:
        raise NotImplementedError

    @property
    def keyspace(self) -> Any:
        """aiworker's own key names (``aiworker.protocol.keys.Keys``)."""
        return self._state.keyspace

    @property
    def enable_postprocess(self) -> bool:
        return not self._state.raw

    # DAGs ----------------------------------------------------------------------------------

    def dag(
        self,
        load: Any = None,
        persist: Any = None,
        routing: Any = None,
        timeout: int | None = None,
        readonly: bool = False,
    ) -> Dag:
        """A DAG builder (AI.DAGEXECUTE): chain ``tensorset``, ``tensorget``, ``modelexecute``,
        ``scriptexecute``, then ``execute()`` for the per-op results. Without LOAD, PERSIST and
        ROUTING it is redisai-py's deprecated AI.DAGRUN flavour (``modelrun`` ops)."""
        return Dag(self._state, self._run, load, persist, routing, timeout, readonly)

    def dagrun(
        self,
        load: Any = None,
        persist: Any = None,
        routing: Any = None,
        timeout: int | None = None,
        readonly: bool = False,
    ) -> Dag:
        """AI.DAGRUN explicitly (``modelrun``/``scriptrun`` ops); use ``dag``."""
        deprecated_call("dagrun", "Use dag instead")
        return Dag(self._state, self._run, load, persist, routing, timeout, readonly, True)

    # configuration -------------------------------------------------------------------------

    def loadbackend(self, identifier: str, path: str) -> Any:
        """AI.CONFIG LOADBACKEND: workers import backends on first use; the name is checked."""
        return self._run(ops.loadbackend(self._state, identifier, path))

    def config(self, name: str, value: Any = None) -> Any:
        """AI.CONFIG: ``config(name)`` reads a setting, ``config(name, value)`` sets it for every
        client (and for workers started afterwards)."""
        return self._run(ops.config(self._state, name, value))

    # models --------------------------------------------------------------------------------

    def modelstore(
        self,
        key: Any,
        backend: str,
        device: str,
        data: Any,
        batch: int | None = None,
        minbatch: int | None = None,
        minbatchtimeout: int | None = None,
        tag: Any = None,
        inputs: Any = None,
        outputs: Any = None,
    ) -> Any:
        """Store a model (split into MODEL_CHUNK_SIZE fields) atomically, after checking that it
        loads (here, or on a live worker; see ``job_ops.verify_plan``)."""
        verify = partial(job_ops.verify_plan, self._state)
        op = model_ops.modelstore(
            self._state, key, backend, device, data, batch, minbatch, minbatchtimeout, tag,
            inputs, outputs, verify=verify,
        )  # fmt: skip
        return self._run(op)

    def modelset(
        self,
        key: Any,
        backend: str,
        device: str,
        data: Any,
        batch: int | None = None,
        minbatch: int | None = None,
        tag: Any = None,
        inputs: Any = None,
        outputs: Any = None,
    ) -> Any:
        """AI.MODELSET; use ``modelstore``."""
        deprecated_call("modelset", "Use modelstore instead")
        verify = partial(job_ops.verify_plan, self._state)
        op = model_ops.modelstore(
            self._state, key, backend, device, data, batch, minbatch, None, tag, inputs,
            outputs, verify=verify, legacy=True,
        )  # fmt: skip
        return self._run(op)

    def modelget(self, key: Any, meta_only: bool = False) -> Any:
        """RedisAI's MODELGET fields as a dict, with ``blob`` (split by the current
        MODEL_CHUNK_SIZE when longer) unless ``meta_only``."""
        return self._run(model_ops.modelget(self._state, key, meta_only))

    def modeldel(self, key: Any) -> Any:
        return self._run(model_ops.modeldel(self._state, key))

    def modelexecute(self, key: Any, inputs: Any, outputs: Any, timeout: int | None = None) -> Any:
        """Run a model through a worker: ``"OK"`` once its outputs are stored, ``"TIMEDOUT"``
        when TIMEOUT ms passed before a worker started it."""
        return self._run(job_ops.modelexecute(self._state, key, inputs, outputs, timeout))

    def modelrun(self, key: Any, inputs: Any, outputs: Any) -> Any:
        """AI.MODELRUN; use ``modelexecute``."""
        deprecated_call("modelrun", "Use modelexecute instead")
        return self._run(job_ops.modelrun(self._state, key, inputs, outputs))

    def modelscan(self) -> Any:
        """``[key, tag]`` of every stored model (RedisAI's experimental AI._MODELSCAN)."""
        return self._run(ops.modelscan(self._state))

    def run(
        self,
        model_key: str,
        inputs: Mapping[str, Any],
        outputs: Sequence[str],
        timeout: int | None = None,
    ) -> Any:
        """Run a model on arrays in one round trip and get its outputs back as arrays
        (``{name: ndarray}``), without storing any tensor: the inputs travel in the job and the
        outputs in the reply."""
        return self._run(job_ops.run(self._state, model_key, inputs, outputs, timeout))

    # tensors -------------------------------------------------------------------------------

    def tensorset(self, key: Any, tensor: Any, shape: Any = None, dtype: Any = None) -> Any:
        """Store a numpy array, or list/tuple values with ``dtype`` (and ``shape``)."""
        return self._run(ops.tensorset(self._state, key, tensor, shape, dtype))

    def tensorget(
        self,
        key: Any,
        as_numpy: bool = True,
        as_numpy_mutable: bool = False,
        meta_only: bool = False,
    ) -> Any:
        """A numpy array (read-only unless ``as_numpy_mutable``), or RedisAI's meta/values dict."""
        op = ops.tensorget(self._state, key, as_numpy, as_numpy_mutable, meta_only)
        return self._run(op)

    # scripts -------------------------------------------------------------------------------

    def scriptstore(
        self, key: Any, device: str, script: Any, entry_points: Any, tag: Any = None
    ) -> Any:
        """Store a TorchScript script with its entry points (compiled and checked first where
        torch is installed, with RedisAI's messages)."""
        return self._run(
            script_ops.scriptstore(self._state, key, device, script, entry_points, tag)
        )

    def scriptset(self, key: Any, device: str, script: Any, tag: Any = None) -> Any:
        """AI.SCRIPTSET (no entry points); use ``scriptstore``."""
        deprecated_call("scriptset", "Use scriptstore instead")
        return self._run(script_ops.scriptstore(self._state, key, device, script, None, tag, True))

    def scriptget(self, key: Any, meta_only: bool = False) -> Any:
        """``device``, ``tag``, ``entry points`` and (unless ``meta_only``) ``source``."""
        return self._run(script_ops.scriptget(self._state, key, meta_only))

    def scriptdel(self, key: Any) -> Any:
        return self._run(script_ops.scriptdel(self._state, key))

    def scriptrun(self, key: Any, function: Any, inputs: Any, outputs: Any) -> Any:
        """AI.SCRIPTRUN; use ``scriptexecute``. The function gets its tensors positionally."""
        deprecated_call("scriptrun", "Use scriptexecute instead")
        return self._run(job_ops.scriptrun(self._state, key, function, inputs, outputs))

    def scriptexecute(
        self,
        key: Any,
        function: Any,
        keys: Any = None,
        inputs: Any = None,
        args: Any = None,
        outputs: Any = None,
        timeout: int | None = None,
    ) -> Any:
        """Run a script's entry point through a worker (``"OK"``, or ``"TIMEDOUT"``)."""
        op = job_ops.scriptexecute(self._state, key, function, keys, inputs, args, outputs, timeout)
        return self._run(op)

    def scriptscan(self) -> Any:
        """``[key, tag]`` of every stored script (RedisAI's experimental AI._SCRIPTSCAN)."""
        return self._run(ops.scriptscan(self._state))

    # statistics ----------------------------------------------------------------------------

    def infoget(self, key: Any) -> Any:
        """RedisAI's AI.INFO fields, summed over every worker process."""
        return self._run(ops.infoget(self._state, key))

    def inforeset(self, key: Any) -> Any:
        return self._run(ops.inforeset(self._state, key))
