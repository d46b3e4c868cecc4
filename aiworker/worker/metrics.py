"""Prometheus metrics of one worker process, modelled on Triton's inference metrics.

Each worker owns a ``CollectorRegistry`` (no global state, so several in-process workers in tests do
not collide) served over HTTP on ``metrics_port`` (0: not served). Per model and device (durations,
as Triton's, of successful requests):

=========================================  =========  ===========================================
``aiworker_request_success_total``         counter    requests that completed with ``ok``
``aiworker_request_failure_total``         counter    failed requests, by ``reason`` (below)
``aiworker_queue_duration_seconds``        histogram  enqueue (stream entry id) to start of work
``aiworker_compute_duration_seconds``      histogram  time in the backend's ``run``
``aiworker_batch_size``                    histogram  requests served by one backend run
``aiworker_inflight_requests``             gauge      entries being worked on (per device)
``aiworker_reclaimed_total``               counter    entries taken over from dead/stalled workers
``aiworker_duplicate_completions_total``   counter    results dropped: another delivery finished
``aiworker_redis_errors_total``            counter    Redis errors the worker rode out, by operation
=========================================  =========  ===========================================

The ``model`` label names a model once a request found it: ran it, or failed in it (up to 1,000
models, of at most 200 characters). Requesters name any model they like, and every name a label
would be kept for good: requests naming no model of that name, and those that timed out before
one was found, count under ``model="<other>"``. Requests of no single model, DAGs (``Client.run``'s
included) and entries that could not be decoded, count under ``model=""``; a DAG's compute duration
is the time its model and script ops spent in the backend.

Failure reasons: ``error`` (the model, its inputs or its backend failed), ``timedout`` (TIMEOUT
passed before the job started), ``malformed`` (the entry could not be decoded), ``too_large``
(a size limit), ``denied`` (the worker's Redis user may not write a key), ``internal`` (a bug in the
worker, reported instead of crashing), ``dead_letter`` (delivered more than max_deliveries times).

The per-job families are fed by ``MetricsHook``, one of the worker's hooks (``worker.hooks``); the
worker's loops count what they ride out (Redis errors, reclaimed entries) themselves.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from aiworker.protocol import messages
from aiworker.protocol.errors import ConfigError
from aiworker.worker.hooks import JobEvent

SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else str(float(bound)), running))
        return out


@dataclass
class _Model:
    successes: int = 0
    queue: _Histogram = field(default_factory=lambda: _Histogram(SECONDS_BUCKETS))
    compute: _Histogram = field(default_factory=lambda: _Histogram(SECONDS_BUCKETS))
    batch: _Histogram = field(default_factory=lambda: _Histogram(BATCH_BUCKETS))


class JobStats(Collector):
    """Successes and the three duration/size histograms per model and device, updated on every
    job: one lock and a bisect (prometheus_client's Histogram takes a lock per value it touches),
    exposed as the usual counter and histogram families when scraped."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _Model] = {}
        registry.register(self)

    def observe(
        self, model: str, device: str, compute_s: float, batch: int, queue_s: float | None
    ) -> None:
        with self._lock:
            row = self._models.get((model, device))
            if row is None:
                row = self._models[(model, device)] = _Model()
            row.successes += 1
            row.compute.observe(compute_s)
            row.batch.observe(batch)
            if queue_s is not None:
                row.queue.observe(max(0.0, queue_s))

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "device"]
        success = CounterMetricFamily(
            "aiworker_request_success", "Requests completed ok.", labels=labels
        )
        queue = HistogramMetricFamily(
            "aiworker_queue_duration_seconds",
            "Time from enqueue to the start of work.",
            labels=labels,
        )
        compute = HistogramMetricFamily(
            "aiworker_compute_duration_seconds",
            "Time spent in the backend running the model.",
            labels=labels,
        )
        batch = HistogramMetricFamily(
            "aiworker_batch_size", "Requests served by one backend run.", labels=labels
        )
        with self._lock:
            for (model, device), row in self._models.items():
                values = [model, device]
                success.add_metric(values, row.successes)
                queue.add_metric(values, row.queue.buckets(), row.queue.total)
                compute.add_metric(values, row.compute.buckets(), row.compute.total)
                batch.add_metric(values, row.batch.buckets(), row.batch.total)
        yield from (success, queue, compute, batch)

    def describe(self) -> Iterator[Metric]:
        return iter(())


# Bounds on the ``model`` label's values (``WorkerMetrics._label``).
MAX_MODEL_LABELS = 1000
MAX_LABEL_CHARS = 200
OTHER_MODEL = "<other>"


def _no_such_model(error: str) -> bool:
    """Whether a request failed because its model or script key holds none."""
    return error in (messages.MODEL_EMPTY, messages.SCRIPT_EMPTY) or error.startswith("WRONGTYPE")


def failure_reason(status: str, error: str, malformed: bool = False) -> str:
    """The ``reason`` label of a failed request."""
    if malformed:
        return "malformed"
    if status == "timedout":
        return "timedout"
    if error.startswith("NOPERM"):
        return "denied"
    if "max_tensor_bytes" in error or "max_model_bytes" in error:
        return "too_large"
    if error.startswith("internal error"):
        return "internal"
    return "error"


class WorkerMetrics:
    """The metric families of one worker process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["model", "device"]
        reg = self.registry
        self.jobs = JobStats(registry=reg)
        self.failures = Counter(
            "aiworker_request_failure",
            "Requests failed, by reason.",
            [*labels, "reason"],
            registry=reg,
        )
        self.in_flight = Gauge(
            "aiworker_inflight_requests", "Entries being worked on.", ["device"], registry=reg
        )
        self.reclaimed = Counter(
            "aiworker_reclaimed",
            "Entries taken over from dead or stalled workers.",
            ["device"],
            registry=reg,
        )
        self.duplicates = Counter(
            "aiworker_duplicate_completions",
            "Results dropped because another delivery of the entry completed first.",
            ["device"],
            registry=reg,
        )
        self.replies_dropped = Counter(
            "aiworker_replies_dropped",
            "Replies not written because the reply key holds another type or is denied.",
            ["device"],
            registry=reg,
        )
        self.redis_errors = Counter(
            "aiworker_redis_errors",
            "Redis errors ridden out, by operation.",
            ["operation"],
            registry=reg,
        )
        self._server: Any = None
        self.port = 0
        self._models: set[str] = set()  # ``model`` labels given so far (``_label``)
        self._models_lock = threading.Lock()

    def success(
        self,
        model: str,
        device: str,
        compute_s: float,
        batch: int = 1,
        queue_s: float | None = None,
    ) -> None:
        self.jobs.observe(self._label(model, found=True), device, compute_s, batch, queue_s)

    def failure(self, model: str, device: str, reason: str, error: str = "") -> None:
        # a request that timed out, could not be read, or named no model of that name never
        # showed that its model exists
        found = reason not in ("timedout", "malformed") and not _no_such_model(error)
        self.failures.labels(self._label(model, found), device, reason).inc()

    def _label(self, model: str, found: bool) -> str:
        """The ``model`` label of a request. A requester names any model it likes: each name a
        label would grow the worker's memory and every scrape without bound (3,000 failed jobs
        naming unique models: 6,000 more lines; 200 naming 900 KB ones: a 361 MB scrape). So a
        model is labelled once a request found it (ran it, or failed in it), up to
        MAX_MODEL_LABELS names of at most MAX_LABEL_CHARS; anything else counts under
        ``OTHER_MODEL``."""
        with self._models_lock:
            if model in self._models or not model:
                return model
            if not found or len(model) > MAX_LABEL_CHARS or len(self._models) >= MAX_MODEL_LABELS:
                return OTHER_MODEL
            self._models.add(model)
            return model

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``addr:port`` in a daemon thread; returns the bound port. A
        port that cannot be bound (in use) is a ``ConfigError`` naming it."""
        try:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics port {port} on {addr}: {exc.strerror or exc}") from exc
        self._server = server
        self.port = int(server.server_port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def render(self) -> bytes:
        """The text exposition format, as a scrape would see it."""
        return generate_latest(self.registry)


class MetricsHook:
    """The per-job metrics, as a worker hook (``worker.hooks``)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def job_finished(self, event: JobEvent) -> None:
        self._dropped(event)
        self.metrics.success(event.model, event.device, event.compute_s, event.batch, event.queue_s)

    def job_failed(self, event: JobEvent) -> None:
        self._dropped(event)
        self.metrics.failure(event.model, event.device, event.reason, event.error)

    def job_skipped(self, event: JobEvent) -> None:
        self.metrics.duplicates.labels(event.device).inc()

    def _dropped(self, event: JobEvent) -> None:
        if event.reply_dropped:
            self.metrics.replies_dropped.labels(event.device).inc()
