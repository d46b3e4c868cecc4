"""What running a job produced, before anything is written: the completion step applies it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiworker.protocol.errors import message_of
from aiworker.protocol.replies import Status

# Outcomes that are no reply status: the job goes on to another device's queue; the entry vanished
# (it is only acknowledged).
FORWARD = "forward"
DROPPED = "dropped"


@dataclass(frozen=True)
class StatsRecord:
    """One AI.INFO contribution of a model or script run."""

    key: str
    duration_us: int = 0
    samples: int = 0
    calls: int = 1
    errors: int = 0


@dataclass
class Outcome:
    """A job's result: its status, the tensors to write, the statistics to count, and what the
    reply carries beyond the status."""

    # a reply's ``Status`` (ok, error, timedout), FORWARD or DROPPED
    status: str
    error: str = ""
    writes: dict[str, np.ndarray] = field(default_factory=dict)
    stats: list[StatsRecord] = field(default_factory=list)
    duration_us: int = 0
    forward_queue: str = ""  # "forward": the device queue the job belongs to
    reply_fields: dict[str, Any] = field(default_factory=dict)  # DAG results, batch sizes
    # Tensors written under the worker's own keys, expiring with the reply (large DAG results).
    temp_writes: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str, stats: list[StatsRecord] | None = None) -> Outcome:
        return cls(Status.ERROR, error=error, stats=stats or [])

    @classmethod
    def forward(cls, queue: str) -> Outcome:
        return cls(FORWARD, forward_queue=queue)


def error_text(exc: BaseException) -> str:
    """An exception's message for a reply: its text, or its type when it has none (a
    framework's own message stays a ``BareMessage``, which the reply flags)."""
    return message_of(exc)
