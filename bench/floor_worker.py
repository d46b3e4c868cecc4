"""The bare Redis floor: XREADGROUP a job, LPUSH a reply. No model, no data."""

from __future__ import annotations

import contextlib
import sys
import threading

import redis

STREAM, GROUP = "floor:queue", "floor"


def serve(url: str, consumer: str) -> None:
    r = redis.Redis.from_url(url, socket_timeout=None)
    while True:
        for _, entries in (
            r.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=1, block=1000, noack=True) or []
        ):
            for _entry_id, fields in entries:
                r.lpush(fields[b"reply"], b"ok")


def main() -> None:
    url, threads = sys.argv[1], int(sys.argv[2])
    r = redis.Redis.from_url(url)
    with contextlib.suppress(redis.ResponseError):
        r.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    workers = [
        threading.Thread(target=serve, args=(url, f"c{i}"), daemon=True) for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
