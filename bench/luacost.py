"""What aiworker's Lua scripts cost Redis against plain commands: ``python -m bench.luacost``.

Redis's own time per operation (SLOWLOG with a threshold of 0: the server's clock around each
command, a script's nested calls included), the median of interleaved rounds against a private
Redis, for:

- a tensor write: the DIY worker's plain HSET against ``tensor_write.lua`` (which refuses, like
  RedisAI, to overwrite a key that is not a tensor);
- a job's input read: the DIY worker's two pipelined HGETs against ``read_jobs.lua`` (every
  input's type and size checked before its data is fetched);
- a completion: the DIY worker's MULTI (HSET output, LPUSH reply, XACK, XDEL) EXEC against
  ``complete.lua`` for one entry with one output, statistics, the reply and the model version it
  ran (all checked before anything is written);
- what any script costs: an empty one with few and with many arguments, and one making ten calls.

This is the profile behind the latency rows of ``make bench`` (see bench/README.md).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import redis

from aiworker.embedded import RedisServer
from aiworker.storage import lua
from bench.common import markdown_table

ROUNDS, N = 5, 400
FIELDS = ["kind", "tensor", "dtype", "FLOAT", "shape", "1,4", "blob", bytes(16)]
TENSOR = dict(zip(FIELDS[::2], FIELDS[1::2], strict=True))
DIY_TENSOR = {"shape": "1,4", "blob": bytes(16)}  # what the DIY worker's client writes
PAYLOAD = b'{"status": "ok"}' + bytes(64)  # a reply's size


def server_us(r: redis.Redis, call: Callable[[], object], names: set[bytes]) -> float:
    """Redis's time (us) per call in the commands named ``names`` that ``call`` sends (a
    transaction's commands are logged one by one, EXEC not at all)."""
    for _ in range(50):
        call()
    r.config_set("slowlog-log-slower-than", 0)
    r.slowlog_reset()
    for _ in range(N):
        call()
    r.config_set("slowlog-log-slower-than", 10_000)
    log = r.slowlog_get(N * 8)
    total = sum(e["duration"] for e in log if e["command"].split(b" ", 1)[0].upper() in names)
    return float(total) / N


def main() -> None:
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url)
        r.config_set("slowlog-max-len", N * 8)
        write, read = lua.load("tensor_write"), lua.load("read_jobs")
        complete = lua.load("complete")
        for script in (write, read, complete):
            script.load(r)
        for key in ("t", "t2"):
            r.hset(key, mapping=TENSOR)  # type: ignore[arg-type]
        r.hset("m", mapping={"kind": "model", "digest": "d1"})
        r.xgroup_create("q", "g", id="0", mkstream=True)
        empty = r.script_load("return 1")
        ten_calls = r.script_load("for i = 1, 10 do redis.call('HGET', KEYS[1], 'kind') end")

        def pending() -> str:
            entry_id = r.xadd("q", {"job": "x"})
            r.xreadgroup("g", "c", {"q": ">"}, count=1)
            return entry_id.decode()  # type: ignore[union-attr, no-any-return]

        def diy_read() -> None:
            pipe = r.pipeline(transaction=False)
            pipe.hget("t", "blob")
            pipe.hget("t2", "blob")
            pipe.execute()

        def aiworker_read() -> None:
            # read_jobs.lua's ARGV: limits (tensor, job, read), then per key: a tensor, used once
            # by job 1
            r.evalsha(read.sha, 2, "t", "t2", 1 << 20, 1 << 20, 1 << 24, "T", "1:1", "T", "1:1")

        def diy_completion() -> None:
            entry_id = pending()
            pipe = r.pipeline(transaction=True)
            pipe.hset("diy:out", mapping=DIY_TENSOR)  # type: ignore[arg-type]
            pipe.lpush("reply", PAYLOAD)
            pipe.xack("q", "g", entry_id)
            pipe.xdel("q", entry_id)
            pipe.execute()
            r.delete("reply")

        def aiworker_completion() -> None:
            # complete_parts.lua's ARGV: group, prefix, reply TTL, no ACL checks, no extra keys,
            # one entry: id, reply key 2, payload, 1 output, 1 stats record, 0 records, 1 expect;
            # the output (key 3, no TTL, its fields), the statistics (key 4), the model (key 5)
            keys = ["q", "reply", "out", "stats", "m"]
            argv = ["g", "aiworker:", 300, 0, 0, 1, pending(), 2, PAYLOAD, 1, 1, 0, 1,
                    3, 0, len(FIELDS), *FIELDS, 4, 77, 1, 1, 0, 5, "d1"]  # fmt: skip
            result = r.evalsha(complete.sha, len(keys), *keys, *argv)
            assert result[0][0] == 1, result  # type: ignore[index]  # applied
            r.delete("reply")

        cases: list[tuple[str, Callable[[], object], set[bytes]]] = [
            ("tensor write: HSET (DIY)", lambda: r.hset("diy:t", mapping=DIY_TENSOR), {b"HSET"}),
            ("tensor write: tensor_write.lua", lambda: r.evalsha(write.sha, 1, "t", *FIELDS), {b"EVALSHA"}),
            ("input read: 2 x HGET (DIY)", diy_read, {b"HGET"}),
            ("input read: read_jobs.lua", aiworker_read, {b"EVALSHA"}),
            ("completion: MULTI..EXEC (DIY)", diy_completion, {b"HSET", b"LPUSH", b"XACK", b"XDEL"}),
            ("completion: complete.lua", aiworker_completion, {b"EVALSHA"}),
            ("empty script, 0 arguments", lambda: r.evalsha(empty, 0), {b"EVALSHA"}),
            ("empty script, 30 arguments", lambda: r.evalsha(empty, 1, *["x"] * 30), {b"EVALSHA"}),
            ("script making 10 HGETs", lambda: r.evalsha(ten_calls, 1, "t"), {b"EVALSHA"}),
        ]  # fmt: skip
        samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for _ in range(ROUNDS):  # interleaved, so that a noisy moment hits every case
            for name, call, commands in cases:
                samples[name].append(server_us(r, call, commands))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    rows = [[name, medians[name]] for name in samples]
    print(markdown_table(["operation", "Redis us per call"], rows))


if __name__ == "__main__":
    main()
