"""Typed forms of the AI.* commands that are not queued as jobs (the client runs them directly).

The queueable ones (ModelExecute, ScriptExecute, DagExecute) and the tensor commands, which are
also DAG ops, live in ``aiworker.protocol.requests``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelStore:
    """AI.MODELSTORE (or the deprecated AI.MODELSET: ``deprecated`` is True)."""

    key: str
    backend: str
    device: str
    blob: bytes
    tag: str = ""
    batchsize: int = 0
    minbatchsize: int = 0
    minbatchtimeout: int = 0
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    deprecated: bool = False


@dataclass(frozen=True)
class ModelGet:
    key: str
    meta: bool = True
    blob: bool = True


@dataclass(frozen=True)
class ModelDel:
    key: str


@dataclass(frozen=True)
class ModelScan:
    pass


@dataclass(frozen=True)
class ScriptStore:
    """AI.SCRIPTSTORE (or the deprecated AI.SCRIPTSET, which has no entry points)."""

    key: str
    device: str
    source: str
    entry_points: tuple[str, ...] = ()
    tag: str = ""
    deprecated: bool = False


@dataclass(frozen=True)
class ScriptGet:
    key: str
    meta: bool = True
    source: bool = True


@dataclass(frozen=True)
class ScriptDel:
    key: str


@dataclass(frozen=True)
class ScriptScan:
    pass


@dataclass(frozen=True)
class InfoGet:
    """AI.INFO key [RESETSTAT]."""

    key: str
    reset: bool = False


@dataclass(frozen=True)
class ModuleInfo:
    """AI.INFO without a key: the versions of the module and of its loaded backends."""


@dataclass(frozen=True)
class ConfigCommand:
    """AI.CONFIG: ``action`` is LOADBACKEND (name=backend, value=path), GET (name) or SET."""

    action: str
    name: str
    value: str | None = None


DirectCommand = (
    ModelStore
    | ModelGet
    | ModelDel
    | ModelScan
    | ScriptStore
    | ScriptGet
    | ScriptDel
    | ScriptScan
    | InfoGet
    | ModuleInfo
    | ConfigCommand
)
