"""redisai-py's deprecated client methods. Each warns with ``DeprecationWarning`` and runs its
replacement; the request goes through RedisAI's parser as the deprecated command would have."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Protocol, cast

from aiworker.client.dag import Dag
from aiworker.parser import parse_command


class Client(Protocol):
    """The ``aiworker.Client`` methods these aliases call (named here to keep imports one-way)."""

    def modelstore(self, key: str, backend: str, device: str, data: bytes, **kw: Any) -> str: ...
    def modelexecute(self, key: str, inputs: Sequence[str], outputs: Sequence[str]) -> str: ...
    def _scriptstore(self, *args: Any, **kwargs: Any) -> str: ...
    def submit(self, device: str, request: Any) -> str: ...
    def _script_queue(self, key: str) -> str: ...
    def submit_reply(self, device: str, request: Any) -> dict[str, Any]: ...
    def _model_queue(self, key: str) -> str: ...
    def hgetall(self, name: Any) -> Any: ...


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated (as in RedisAI); use {new}", DeprecationWarning, stacklevel=3
    )


def _names(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


class DeprecatedCommands:
    """Mixed into ``Client``: modelset, modelrun, scriptset, scriptrun, dagrun."""

    def modelset(
        self,
        key: str,
        backend: str,
        device: str,
        data: bytes,
        batch: int | None = None,
        minbatch: int | None = None,
        tag: str | None = None,
        inputs: str | Sequence[str] | None = None,
        outputs: str | Sequence[str] | None = None,
    ) -> str:
        """AI.MODELSET: use ``modelstore``."""
        _warn("modelset", "modelstore")
        client = cast("Client", self)
        return client.modelstore(
            key,
            backend,
            device,
            data,
            batch=batch,
            minbatch=minbatch,
            tag=tag,
            inputs=inputs,
            outputs=outputs,
        )

    def modelrun(self, key: str, inputs: str | Sequence[str], outputs: str | Sequence[str]) -> str:
        """AI.MODELRUN: use ``modelexecute``."""
        _warn("modelrun", "modelexecute")
        client = cast("Client", self)
        return client.modelexecute(key, _names(inputs), _names(outputs))

    def scriptset(self, key: str, device: str, script: str, tag: str | None = None) -> str:
        """AI.SCRIPTSET (no entry points): use ``scriptstore``."""
        _warn("scriptset", "scriptstore")
        client = cast("Client", self)
        return client._scriptstore(key, device, script, [], tag, legacy=True)

    def scriptrun(
        self,
        key: str,
        function: str,
        inputs: str | Sequence[str],
        outputs: str | Sequence[str],
    ) -> str:
        """AI.SCRIPTRUN: use ``scriptexecute``. The function gets its tensors positionally."""
        _warn("scriptrun", "scriptexecute")
        client = cast("Client", self)
        command = ["AI.SCRIPTRUN", key, function, "INPUTS", *_names(inputs)]
        request = parse_command([*command, "OUTPUTS", *_names(outputs)])
        return client.submit(client._script_queue(key), request)

    def dagrun(
        self,
        load: str | Sequence[str] | None = None,
        persist: str | Sequence[str] | None = None,
        routing: str | None = None,
        timeout: int | None = None,
        readonly: bool = False,
    ) -> Dag:
        """AI.DAGRUN: use ``dag``. The builder writes MODELRUN/SCRIPTRUN ops."""
        _warn("dagrun", "dag")
        client = cast("Client", self)
        return Dag(client, load, persist, routing, timeout, readonly, deprecated=True)
