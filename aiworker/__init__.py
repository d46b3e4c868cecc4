"""aiworker: RedisAI's tensors, models and execution on stock Redis, served by sidecar workers.

``import aiworker`` loads the client side only; ``aiworker.Worker`` imports the worker side on
first use, so a web app that only enqueues jobs never loads backends or metrics.
"""

from typing import TYPE_CHECKING, Any

from aiworker.client import Client, ClusterClient
from aiworker.client.verify import UnverifiedModelWarning, UnverifiedScriptWarning
from aiworker.protocol.errors import (
    AIError,
    AIWorkerError,
    BackendUnavailable,
    ConfigError,
    JobFailed,
    JobTimedOut,
    NoLiveWorker,
    QueueFull,
    ReplyTimeout,
    WrongTypeError,
)
from aiworker.settings import Settings

if TYPE_CHECKING:
    from aiworker.worker.process import Worker

__version__ = "0.1.0"

__all__ = [
    "AIError",
    "AIWorkerError",
    "BackendUnavailable",
    "Client",
    "ClusterClient",
    "ConfigError",
    "JobFailed",
    "JobTimedOut",
    "NoLiveWorker",
    "QueueFull",
    "ReplyTimeout",
    "Settings",
    "UnverifiedModelWarning",
    "UnverifiedScriptWarning",
    "Worker",
    "WrongTypeError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from aiworker.worker.process import Worker

        return Worker
    raise AttributeError(f"module 'aiworker' has no attribute {name!r}")
