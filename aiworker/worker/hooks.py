"""Worker hooks: code a deployment adds to every job's life, the way arq's ``on_job_start`` /
``after_job_end`` and dramatiq's middleware do, without the worker calling it by name.

A hook is any object with some of these methods, each taking one ``JobEvent``:

* ``job_started(event)``: this worker starts running the job (a batch: when the batch runs);
* ``job_finished(event)``: its completion was applied with status ``ok``;
* ``job_failed(event)``: its completion was applied with an error (``event.status`` is ``error``
  or ``timedout``, ``event.reason`` the metrics' failure reason);
* ``job_skipped(event)``: another delivery of the entry had completed it; nothing was written.

Pass them as ``Worker(settings, hooks=[...])``, or ``aiworker worker --hook module:object``
(repeatable; a class is instantiated without arguments). Hooks run on the thread that runs or
completes the job, after its writes: keep them short. An exception in a hook is logged and
ignored; the job's outcome stands. The worker's own metrics (``metrics.MetricsHook``) and job logs
(``LoggingHook``) are two such hooks, installed first.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiworker.protocol.errors import ConfigError

log = logging.getLogger("aiworker.worker")
METHODS = ("job_started", "job_finished", "job_failed", "job_skipped")


@dataclass(slots=True)
class JobEvent:
    """One job at one point of its life (read it, don't change it: every hook sees the same
    one). Times are unix seconds by Redis's clock (``enqueued`` is its entry id's time; the
    worker's own ones are corrected to it: ``health.RedisClock``)."""

    job_id: str  # the stream entry id
    queue: str  # the stream it was read from
    device: str  # the device queue it belongs to (CPU, GPU:1, ...)
    model: str  # the model or script it runs ("" for a DAG, or an entry that could not be decoded)
    op: str  # MODELEXECUTE, SCRIPTEXECUTE, DAGEXECUTE, ... ("" when it could not be decoded)
    enqueued: float  # when the requester queued it (before a forward to another device queue)
    started: float | None = None  # when this worker took it from the stream
    finished: float | None = None  # when its completion was applied
    status: str = ""  # ok | error | timedout (empty while it runs)
    error: str = ""
    reason: str = ""  # a failure's reason: error, timedout, malformed, too_large, denied, ...
    compute_s: float = 0.0  # time in the backend
    batch: int = 1  # requests served by the backend run that served it
    reply_key: str | None = None
    reply_dropped: bool = False  # the reply key was not a list the worker may push to
    # AI.INFO statistics: 1 counted, 0 none, -1 counted after repairing a statistics hash that
    # was not one (said of every job of the completion counted into it), -2 not counted (the
    # worker user may not write them)
    stats: int = 0

    @property
    def queue_s(self) -> float | None:
        """From enqueue to this worker taking it."""
        return None if self.started is None else max(0.0, self.started - self.enqueued)

    @property
    def total_s(self) -> float | None:
        """From enqueue to its completion."""
        return None if self.finished is None else max(0.0, self.finished - self.enqueued)


class Hooks:
    """The hooks of one worker, called in order (see the module docstring)."""

    def __init__(self, hooks: Iterable[Any] = ()) -> None:
        self.hooks = list(hooks)
        self._calls: dict[str, list[Callable[[JobEvent], Any]]] = {
            name: [getattr(h, name) for h in self.hooks if callable(getattr(h, name, None))]
            for name in METHODS
        }

    def wants(self, name: str) -> bool:
        """Whether a hook has ``name``: an event nobody takes is not even built."""
        return bool(self._calls[name])

    def call(self, name: str, event: JobEvent) -> None:
        for method in self._calls[name]:
            try:
                method(event)
            except Exception:  # a hook's bug: logged, the job's outcome stands
                log.exception("hook %s failed on job %s", method, event.job_id)


def load_hook(spec: str) -> Any:
    """The hook ``module:object`` names (``--hook``); a class is instantiated without
    arguments."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"hook {spec!r}: expected module:object")
    try:
        found: Any = importlib.import_module(module_name)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"hook {spec!r}: {exc}") from exc
    if isinstance(found, type):
        found = found()
    if not any(callable(getattr(found, method, None)) for method in METHODS):
        raise ConfigError(f"hook {spec!r} has none of {', '.join(METHODS)}")
    return found


class LoggingHook:
    """The worker's job logs: failures, results dropped, replies that could not be written."""

    def job_finished(self, event: JobEvent) -> None:
        _completion_warnings(event)

    def job_failed(self, event: JobEvent) -> None:
        _completion_warnings(event)
        log.info(
            "job %s %s: %s",
            event.job_id,
            event.status,
            event.error,
            extra={"job_id": event.job_id, "queue": event.queue, "reason": event.reason},
        )

    def job_skipped(self, event: JobEvent) -> None:
        log.info(
            "job %s: completed by another delivery; result dropped",
            event.job_id,
            extra={"job_id": event.job_id, "queue": event.queue},
        )


def _completion_warnings(event: JobEvent) -> None:
    extra = {"job_id": event.job_id, "queue": event.queue}
    if event.reply_dropped:
        log.warning(
            "job %s %s; its reply key '%s' is not a list this worker may push to: no reply written",
            event.job_id,
            event.status,
            event.reply_key,
            extra=extra,
        )
    if event.stats < 0:
        log.warning(
            "job %s: statistics of %s %s",
            event.job_id,
            event.model or event.op,
            "were not a hash of integers: repaired"
            if event.stats == -1
            else "not counted: this worker may not write them",
            extra=extra,
        )
