"""A worker hook for tests/test_hooks.py, loaded with ``aiworker worker --hook hooked:RedisLog``:
it appends each event it sees to the list ``hooked`` of the Redis in ``HOOKED_REDIS_URL``."""

from __future__ import annotations

import os

import redis

from aiworker.worker.hooks import JobEvent


class RedisLog:
    def __init__(self) -> None:
        self.r = redis.Redis.from_url(os.environ["HOOKED_REDIS_URL"])

    def job_started(self, event: JobEvent) -> None:
        self.r.rpush("hooked", f"started {event.model} {event.job_id}")

    def job_finished(self, event: JobEvent) -> None:
        self.r.rpush("hooked", f"finished {event.model} {event.job_id} {event.status}")

    def job_failed(self, event: JobEvent) -> None:
        self.r.rpush("hooked", f"failed {event.model} {event.job_id} {event.reason}")
