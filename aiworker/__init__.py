"""aiworker: RedisAI's tensors, models and execution on stock Redis, served by sidecar workers."""

from aiworker.client import Client
from aiworker.errors import (
    AIError,
    AIWorkerError,
    BackendUnavailable,
    ConfigError,
    JobFailed,
    JobTimedOut,
    WrongTypeError,
)
from aiworker.settings import Settings
from aiworker.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "AIError",
    "AIWorkerError",
    "BackendUnavailable",
    "Client",
    "ConfigError",
    "JobFailed",
    "JobTimedOut",
    "Settings",
    "Worker",
    "WrongTypeError",
    "__version__",
]
