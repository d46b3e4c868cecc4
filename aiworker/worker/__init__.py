"""The worker side: consume -> schedule -> execute -> complete, and the process that runs it."""

from aiworker.worker.process import Worker

__all__ = ["Worker"]
