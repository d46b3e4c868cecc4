"""The worker side: per device a lane (consume -> execute -> complete, overlapping), and the process that runs it."""

from aiworker.worker.process import Worker

__all__ = ["Worker"]
