"""Soak: steady mixed load for minutes; Redis memory and worker RSS must stay flat after warm-up.

    python -m bench.soak --minutes 3

A private redis-server and worker processes run a throttled mix of jobs that touches every bound:
models rotating through a cache smaller than their number (STUB and TorchScript, so models are
evicted and reloaded all the time), failing jobs, abandoned requests whose reply lists must expire
(``reply_ttl``), malformed entries, and entries a vanished consumer took, which end in the capped
dead-letter stream. Every ``--every`` seconds it prints Redis ``used_memory``, key count, stream
lengths and each worker's RSS; at the end, the growth of each after the warm-up.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from aiworker import Client
from aiworker.embedded import RedisServer
from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.worker.process import ensure_group

ROOT = Path(__file__).resolve().parent.parent
KEYS = Keys()
QUEUE = KEYS.queue("CPU")
STUB_MODELS = [f"soak:stub{i}" for i in range(6)]
TORCH_MODELS = ["soak:torch0", "soak:torch1"]
SLOTS = 16  # input/output keys per load thread: user data stays a fixed size
# Enqueue an entry and have a consumer that never acks take one, atomically (before any worker).
GHOST = """
redis.call('XADD', KEYS[1], '*', 'cmd', ARGV[1])
return redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
"""


def torch_blob() -> bytes | None:
    try:
        import torch
    except ImportError:
        return None

    class Add(torch.nn.Module):
        def forward(self, a, b):  # type: ignore[no-untyped-def]
            return a + b

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Add()), buffer)
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Load:
    """Load threads sharing a rate limit and counters."""

    def __init__(self, url: str, rate: float, models: list[str]) -> None:
        self.url = url
        self.interval = 1.0 / rate
        self.models = models
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.next_at = time.monotonic()
        self.counts = {"ok": 0, "failed": 0, "abandoned": 0, "malformed": 0, "ghost": 0}

    def _tick(self) -> bool:
        with self.lock:
            now = time.monotonic()
            wait = self.next_at - now
            self.next_at = max(self.next_at, now) + self.interval
        if wait > 0:
            self.stop.wait(wait)
        return not self.stop.is_set()

    def _count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def run(self, n: int) -> None:
        client = Client.from_url(self.url, reply_timeout=60)
        ghost = client.register_script(GHOST)
        rng = random.Random(n)
        while self._tick():
            slot = rng.randrange(SLOTS)
            a, b, out = f"soak:a:{n}:{slot}", f"soak:b:{n}:{slot}", f"soak:o:{n}:{slot}"
            roll = rng.random()
            try:
                if roll < 0.02:
                    client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE broken", "reply": f"soak:r:{n}"})
                    client.blpop([f"soak:r:{n}"], 30)
                    self._count("malformed")
                elif roll < 0.03:  # taken by a consumer that vanishes: dead-lettered later
                    cmd = f"AI.MODELEXECUTE soak:fail INPUTS 1 {a} OUTPUTS 1 {out}"
                    ghost(keys=[QUEUE], args=[cmd, CONSUMER_GROUP, "soak:ghost"])
                    self._count("ghost")
                elif roll < 0.08:  # nobody waits for the reply: its list must expire
                    cmd = f"AI.MODELEXECUTE soak:stub0 INPUTS 2 {a} {b} OUTPUTS 1 {out}"
                    client.xadd(QUEUE, {"cmd": cmd, "reply": f"soak:gone:{time.time_ns()}"})
                    self._count("abandoned")
                else:
                    size = rng.choice([4, 64, 1024])
                    client.tensorset(a, np.full(size, slot, dtype=np.float32))
                    client.tensorset(b, np.ones(size, dtype=np.float32))
                    model = "soak:fail" if roll < 0.15 else rng.choice(self.models)
                    try:
                        client.modelexecute(model, [a, b], [out])
                        self._count("ok")
                    except redis.ResponseError:
                        self._count("failed")
            except redis.ConnectionError:
                if self.stop.is_set():
                    break
                raise
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=150.0, help="Requests per second.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="Load threads.")
    parser.add_argument("--every", type=float, default=10.0, help="Seconds between samples.")
    parser.add_argument("--warmup", type=float, default=0.33, help="Fraction of the run.")
    args = parser.parse_args(argv)

    with RedisServer() as server:
        admin = Client.from_url(server.url)
        blob = torch_blob()
        models = list(STUB_MODELS) + (TORCH_MODELS if blob else [])
        for key in STUB_MODELS:
            admin.modelstore(key, "STUB", "CPU", json.dumps({"op": "add"}).encode())
        admin.modelstore("soak:fail", "STUB", "CPU", json.dumps({"op": "fail"}).encode())
        for key in TORCH_MODELS if blob else []:
            admin.modelstore(key, "TORCH", "CPU", blob)  # type: ignore[arg-type]
        ensure_group(admin, QUEUE)

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.update(
            AIWORKER_REPLY_TTL="5",
            AIWORKER_VISIBILITY_TIMEOUT="2",
            AIWORKER_MAX_DELIVERIES="1",
            AIWORKER_DEAD_LETTER_MAXLEN="100",
            AIWORKER_MODEL_CACHE_SIZE="4",
            AIWORKER_THREADS_PER_QUEUE="2",
        )
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "aiworker", "worker", "--redis-url", server.url],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(args.workers)
        ]
        load = Load(server.url, args.rate, models)
        threads = [
            threading.Thread(target=load.run, args=(n,), daemon=True) for n in range(args.threads)
        ]
        for t in threads:
            t.start()

        header = (
            f"{'t(s)':>6} {'jobs':>7} {'redis MB':>9} {'keys':>6} {'queue':>6} {'pend':>5} "
            f"{'dead':>5} " + " ".join(f"{f'w{i} RSS MB':>10}" for i in range(len(workers)))
        )
        print(
            f"soak: {args.minutes:g} min, {args.rate:g} req/s, {len(workers)} workers, models: {len(models)} (cache 4)"
        )
        print(header)
        rows: list[dict[str, Any]] = []
        started = time.monotonic()
        end = started + args.minutes * 60
        try:
            while time.monotonic() < end:
                time.sleep(min(args.every, max(0.0, end - time.monotonic())))
                info = admin.info("memory")
                groups = {g["name"].decode(): g for g in admin.xinfo_groups(QUEUE)}
                row = {
                    "t": time.monotonic() - started,
                    "jobs": sum(load.counts.values()),
                    "redis": info["used_memory"] / 2**20,
                    "keys": admin.dbsize(),
                    "queue": admin.xlen(QUEUE),
                    "pending": groups[CONSUMER_GROUP]["pending"],
                    "dead": admin.xlen(KEYS.dead_letters("CPU")),
                    "rss": [rss_mb(w.pid) for w in workers],
                }
                rows.append(row)
                print(
                    f"{row['t']:6.0f} {row['jobs']:7d} {row['redis']:9.2f} {row['keys']:6d} "
                    f"{row['queue']:6d} {row['pending']:5d} {row['dead']:5d} "
                    + " ".join(f"{r:10.1f}" for r in row["rss"]),
                    flush=True,
                )
        finally:
            load.stop.set()
            for t in threads:
                t.join(60)
            for w in workers:
                w.terminate()
            codes = [w.wait(60) for w in workers]

    print(f"requests: {load.counts}; worker exit codes: {codes}")
    settled = [r for r in rows if r["t"] >= args.warmup * args.minutes * 60]
    if len(settled) < 2:
        print("too short to judge")
        return 0

    def growth(values: list[float]) -> str:
        first, last, peak = values[0], values[-1], max(values)
        return (
            f"{first:.1f} -> {last:.1f} MB (peak {peak:.1f}, {100 * (last - first) / first:+.1f}%)"
        )

    print(f"after warm-up ({settled[0]['t']:.0f}s on):")
    print(f"  redis used_memory: {growth([r['redis'] for r in settled])}")
    for i in range(len(workers)):
        print(f"  worker {i} RSS:     {growth([r['rss'][i] for r in settled])}")
    print(
        f"  keys: {settled[0]['keys']} -> {settled[-1]['keys']}; dead letters capped at {max(r['dead'] for r in rows)}"
    )
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
