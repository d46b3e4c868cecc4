"""What a TorchScript script's ``redis.execute`` costs per call: ``python -m bench.script_calls``.

A script calls one command 1,000 times on its declared key, on a worker's connection to a
private Redis (the ``ScriptContext`` a worker gives it); the best of 5 runs, against the same
command sent 1,000 times from Python on that connection. The difference is the script's own
cost: the call into Python, where the command's keys are (COMMAND INFO, read once per command),
the checks on them, the reply's conversion.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import redis
import torch

from aiworker.backends.base import ScriptContext
from aiworker.backends.torch_script import TorchScript
from aiworker.embedded import RedisServer
from aiworker.storage.wire import Wire
from bench.common import markdown_table

CALLS = 1000
SOURCE = f"""
def loop(tensors: List[Tensor], keys: List[str], args: List[str]):
    for i in range({CALLS}):
        redis.execute(args[0], [keys[0]] + args[1:])
    return torch.zeros(1)
"""
COMMANDS = [["INCR"], ["PFCOUNT"], ["HINCRBY", "f", "1"], ["HRANDFIELD"]]


def best_of(runs: int, call: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def measure(r: redis.Redis, wire: Wire, script: TorchScript, command: list[str]) -> list[object]:
    """(command, plain us/call, script us/call, the script's own us/call)."""
    key = f"key:{command[0]}"
    r.delete(key)
    if command[0] == "PFCOUNT":
        r.pfadd(key, "a")
    elif command[0] == "HRANDFIELD":
        r.hset(key, "f", "1")
    context = ScriptContext((key,), wire.execute)

    def plain() -> None:
        for _ in range(CALLS):
            wire.execute(command[0], key, *command[1:])

    def scripted() -> None:
        script.call("loop", [], [key], command, -1, context=context)

    plain_s, script_s = best_of(5, plain), best_of(5, scripted)
    us = 1e6 / CALLS
    return [" ".join(command), plain_s * us, script_s * us, (script_s - plain_s) * us]


def main() -> None:
    warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates TorchScript
    script = TorchScript(SOURCE, ["loop"], torch.device("cpu"))
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url)
        wire = Wire(r.connection_pool)
        rows = [measure(r, wire, script, command) for command in COMMANDS]
    print(f"{CALLS:,} calls, best of 5 runs; torch {torch.__version__}")
    headers = ["command", "plain us/call", "script us/call", "script's own us/call"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
