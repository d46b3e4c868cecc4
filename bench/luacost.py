"""What aiworker's Lua scripts cost Redis against plain commands: ``python -m bench.luacost``.

Each operation is sent on a ``Wire`` (the worker's connection) to a private Redis and measured
three ways, the median of interleaved rounds: Redis's time (SLOWLOG at a threshold of 0: the
server's clock around each command, a script's nested calls included, a transaction's commands one
by one, EXEC not at all; receiving arguments and sending replies are not in it), Redis's CPU
(``INFO cpu``: everything, socket I/O included, which is most of what a large value costs;
counted in a pass of its own, without SLOWLOG recording), and the client's CPU (the calling
thread's). Operations:

- a tensor write: the DIY worker's plain HSET against ``tensor_write.lua`` (which refuses, like
  RedisAI, to overwrite a key that is not a tensor);
- a job's input read, of two 16-byte tensors and of one 600 KB tensor: the DIY worker's plain
  HGETs against ``read_jobs.lua`` fetching every tensor itself (the read before issue 17; still
  the Redis Cluster path) and against the read as the worker makes it now (``state.read``: the
  script fetches tensors up to ``tensor_io.LUA_VALUE_BYTES``; larger ones, known from an earlier
  read, come from plain HMGETs in a MULTI the script clears);
- a completion with one output of 16 bytes, 4 KB and 600 KB (plus statistics, the reply, the
  model version it ran, all checked before anything is written): the DIY worker's MULTI (HSET
  output, LPUSH reply, XACK, XDEL) against ``complete.lua`` with the blob as a Lua argument and
  against the blob staged (a plain HSET of a stage key in the same MULTI as the script, which
  renames it into place; what the worker does above ``tensor_io.LUA_VALUE_BYTES``);
- a batch of 32 jobs with 8 KB inputs and outputs, read and completed with the values through
  Lua, and as the worker does it (at most ``tensor_io.LUA_CALL_BYTES`` of them through each
  script; the rest by plain HMGETs and staged HSETs);
- what any script costs: an empty one with few and with many arguments, and one making ten calls.

This is the profile behind the latency rows of ``make bench`` (see bench/README.md).
"""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import redis

from aiworker.embedded import RedisServer
from aiworker.execution import limits, state
from aiworker.execution.outcome import Outcome, StatsRecord
from aiworker.protocol import tensor as codec
from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.protocol.requests import TENSOR, ModelExecute
from aiworker.storage import lua, tensor_io
from aiworker.storage import model as model_store
from aiworker.storage.wire import Wire
from aiworker.worker.complete import Completer, Finished
from aiworker.worker.leases import HeldEntries
from bench.common import markdown_table, redis_cpu

ROUNDS, N = 5, 200
QUEUE = Keys().queue("CPU")
SMALL = np.arange(4, dtype=np.float32)
PAYLOAD = b'{"status": "ok"}' + bytes(64)  # a reply's size
SIZES = {"16 B": 4, "4 KB": 1024, "600 KB": 150_000}  # float32 elements
BATCH, BATCH_VALUE = 32, 8192  # the batch cases: jobs, bytes of each input and output


@dataclass
class Case:
    name: str
    call: Callable[[], object]
    prepare: Callable[[int], None] = lambda n: None  # before each timed round of n calls


@dataclass
class Cost:
    redis_us: float  # SLOWLOG
    redis_cpu_us: float  # INFO cpu
    client_cpu_us: float


def measure(admin: redis.Redis, case: Case) -> Cost:
    """One round of N calls of ``case`` (after a few warm-up calls) for the CPU figures, and N
    more for Redis's time (recording every command in SLOWLOG costs Redis CPU of its own, about a
    microsecond a command, so it is not on while the CPU is counted)."""
    case.prepare(N + 10)
    for _ in range(10):
        case.call()
    cpu, client = redis_cpu(admin), time.thread_time()
    for _ in range(N):
        case.call()
    client, cpu = time.thread_time() - client, redis_cpu(admin) - cpu
    case.prepare(N)
    admin.config_set("slowlog-log-slower-than", 0)
    admin.slowlog_reset()
    for _ in range(N):
        case.call()
    admin.config_set("slowlog-log-slower-than", 10_000)
    log = admin.slowlog_get(N * 80)
    ours = [e for e in log if e["command"].split(b" ", 1)[0].upper() not in (b"CONFIG", b"INFO")]
    total = sum(e["duration"] for e in ours)
    return Cost(total / N, cpu / N * 1e6, client / N * 1e6)


class Pending:
    """Stream entries read by a consumer and not yet acknowledged, one per completion."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.ids: collections.deque[str] = collections.deque()

    def prepare(self, n: int) -> None:
        self.wire.pipeline([("XADD", QUEUE, "*", "job", "x") for _ in range(n)])
        replies = self.wire.execute(
            "XREADGROUP", "GROUP", CONSUMER_GROUP, "c", "COUNT", n, "STREAMS", QUEUE, ">"
        )
        self.ids.extend(entry[0].decode() for entry in replies[0][1])

    def take(self) -> str:
        return self.ids.popleft()


@contextmanager
def stage_above(nbytes: int) -> Iterator[None]:
    """The worker's staging thresholds (a value's and a call's), for the cases that compare with
    and without staging."""
    kept = tensor_io.LUA_VALUE_BYTES, tensor_io.LUA_CALL_BYTES
    tensor_io.LUA_VALUE_BYTES = tensor_io.LUA_CALL_BYTES = nbytes
    try:
        yield
    finally:
        tensor_io.LUA_VALUE_BYTES, tensor_io.LUA_CALL_BYTES = kept


@contextmanager
def as_set(through_lua: bool) -> Iterator[None]:
    """Every value through Lua, or the worker's thresholds as they are."""
    if through_lua:
        with stage_above(1 << 62):
            yield
    else:
        yield


def read_cases(wire: Wire, admin: redis.Redis) -> list[Case]:
    script = lua.load("read_jobs")
    bounds = limits.Limits()
    model_store.store_model(admin, Keys(), "m", model_store.ModelMeta("STUB", "CPU"), b"{}")
    cases = []
    for label, keys, array in (
        ("2 x 16 B", ["t1", "t2"], SMALL),
        ("600 KB", ["big"], np.zeros(SIZES["600 KB"], dtype=np.float32)),
    ):
        for key in keys:
            tensor_io.write(admin, key, array)
        request = ModelExecute("m", tuple(keys), ("o",))
        cache = state.MetaCache()
        state.read(
            wire, [request], bounds, cache, Keys()
        )  # the model's metadata is cached, as it runs

        def diy(keys: list[str] = keys) -> object:
            return wire.pipeline([("HGET", key, "blob") for key in keys])

        def inline(keys: list[str] = keys) -> object:
            # the worker's own arguments (they cannot drift from the script's), every tensor
            # fetched by the script
            uses = {(TENSOR, key): {0: 1} for key in keys}
            _, args, _ = state._script_arguments(uses, bounds, bounds.max_job_bytes, 1 << 62, set())
            replies = lua.run_one(wire, script, keys, args)
            pairs = zip(keys, replies, strict=True)
            return [limits.decode_tensor_reply(k, r, 1 << 30) for k, r in pairs]

        def guarded(request: ModelExecute = request, cache: state.MetaCache = cache) -> object:
            [snapshot] = state.read(wire, [request], bounds, cache, Keys())
            return snapshot.tensors(request.inputs)

        cases += [
            Case(f"input read, {label}: HGET (DIY)", diy),
            Case(f"input read, {label}: read_jobs.lua fetching all (before)", inline),
            Case(f"input read, {label}: state.read (now)", guarded),
        ]
    return cases


def write_cases(wire: Wire, admin: redis.Redis) -> list[Case]:
    pending = Pending(wire)
    admin.xgroup_create(QUEUE, CONSUMER_GROUP, id="0", mkstream=True)
    completer = Completer(Keys(), "bench", 300, HeldEntries())
    completer.check_acl = False  # as for a worker whose user may run anything (unrestricted)
    digest = bytes(admin.hget("m", "digest") or b"")  # the model version the job ran
    cases = []
    for label, count in SIZES.items():
        array = np.zeros(count, dtype=np.float32)
        diy_fields = ["shape", str(count), "blob", array.tobytes()]

        def diy(diy_fields: list[object] = diy_fields) -> object:
            entry_id = pending.take()
            return wire.pipeline(
                [
                    ("MULTI",),
                    ("HSET", "diy:out", *diy_fields),
                    ("LPUSH", "diy:reply", PAYLOAD),
                    ("XACK", QUEUE, CONSUMER_GROUP, entry_id),
                    ("XDEL", QUEUE, entry_id),
                    ("EXEC",),
                ]
            )

        def complete(array: np.ndarray = array, stage: int = 1 << 62) -> object:
            outcome = Outcome("ok", writes={"out": array}, stats=[StatsRecord("m", 77, 1)])
            item = Finished(pending.take(), outcome, reply="reply", expect=[("m", digest)])
            with stage_above(stage):
                [result] = completer.complete(wire, QUEUE, [item])
            assert result.applied, result
            return result

        cases += [
            Case(f"{label} output: MULTI..EXEC (DIY)", diy, pending.prepare),
            Case(
                f"{label} output: complete.lua, blob as a Lua argument", complete, pending.prepare
            ),
            Case(
                f"{label} output: complete.lua, blob staged by HSET",
                lambda array=array: complete(array, stage=0),
                pending.prepare,
            ),
        ]
    return cases


def batch_cases(wire: Wire, admin: redis.Redis) -> list[Case]:
    """A batch of BATCH jobs with 8 KB inputs and outputs (what a batching worker reads and
    completes per run): through Lua, and with the values kept out of it (the worker now)."""
    array = np.zeros(BATCH_VALUE // 4, dtype=np.float32)
    requests = []
    for n in range(BATCH):
        tensor_io.write(admin, f"bin{n}", array)
        requests.append(ModelExecute("m", (f"bin{n}",), (f"bout{n}",)))
    bounds = limits.Limits()
    digest = bytes(admin.hget("m", "digest") or b"")
    pending = Pending(wire)
    completer = Completer(Keys(), "bench", 300, HeldEntries())
    completer.check_acl = False

    def read(through_lua: bool) -> Callable[[], object]:
        cache = state.MetaCache()
        with as_set(through_lua):
            state.read(wire, requests, bounds, cache, Keys())  # sizes and metadata learnt

        def call() -> object:
            with as_set(through_lua):
                return state.read(wire, requests, bounds, cache, Keys())

        return call

    def complete(through_lua: bool) -> object:
        items = [
            Finished(
                pending.take(),
                Outcome("ok", writes={f"bout{n}": array}, stats=[StatsRecord("m", 77, 1)]),
                reply=f"breply{n}",
                expect=[("m", digest)],
            )
            for n in range(BATCH)
        ]
        with as_set(through_lua):
            results = completer.complete(wire, QUEUE, items)
        assert all(result.applied for result in results), results
        return results

    label = f"batch of {BATCH} x {BATCH_VALUE // 1024} KB"
    return [
        Case(f"{label}, input read: tensors through Lua", read(True)),
        Case(f"{label}, input read: within LUA_CALL_BYTES (now)", read(False)),
        Case(
            f"{label}, completion: outputs through Lua",
            lambda: complete(True),
            lambda n: pending.prepare(n * BATCH),
        ),
        Case(
            f"{label}, completion: within LUA_CALL_BYTES (now)",
            lambda: complete(False),
            lambda n: pending.prepare(n * BATCH),
        ),
    ]


def main() -> None:
    with RedisServer() as server:
        admin = redis.Redis.from_url(server.url)
        admin.config_set("slowlog-max-len", N * 80)
        wire = Wire(admin.connection_pool)
        write = lua.load("tensor_write")
        for script in (write, lua.load("read_jobs"), lua.load("complete")):
            script.load(admin)
        fields = codec.encode_fields(SMALL)
        flat = [item for pair in fields.items() for item in pair]
        empty = admin.script_load("return 1")
        ten_calls = admin.script_load("for i = 1, 10 do redis.call('HGET', KEYS[1], 'kind') end")
        cases = [
            Case("tensor write: HSET (DIY)", lambda: wire.execute("HSET", "diy:t", *flat[4:])),
            Case("tensor write: tensor_write.lua", lambda: lua.run_one(wire, write, ["t"], flat)),
            *read_cases(wire, admin),
            *write_cases(wire, admin),
            *batch_cases(wire, admin),
            Case("empty script, 0 arguments", lambda: wire.execute("EVALSHA", empty, 0)),
            Case(
                "empty script, 30 arguments",
                lambda: wire.execute("EVALSHA", empty, 1, *["x"] * 30),
            ),
            Case("script making 10 HGETs", lambda: wire.execute("EVALSHA", ten_calls, 1, "t")),
        ]
        samples: dict[str, list[Cost]] = {case.name: [] for case in cases}
        for _ in range(ROUNDS):  # interleaved, so that a noisy moment hits every case
            for case in cases:
                samples[case.name].append(measure(admin, case))
    rows = []
    for name, costs in samples.items():
        rows.append(
            [
                name,
                statistics.median(c.redis_us for c in costs),
                statistics.median(c.redis_cpu_us for c in costs),
                statistics.median(c.client_cpu_us for c in costs),
            ]
        )
    headers = ["operation", "Redis us (SLOWLOG)", "Redis CPU us", "client CPU us"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
