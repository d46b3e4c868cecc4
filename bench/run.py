"""``make bench``: aiworker against its peers, all ratios measured in one run on one machine.

Scenarios: (1) latency of one client on a trivial model, (2) throughput with 8 and 32 clients,
(3) a compute-bound model with batching, (4) 16 MB tensors in and out, (5) a 500 MB model blob,
(7) a local Redis Cluster with queue_partitions 1 and 3 next to a single Redis (``bench.cluster``).
Prints markdown tables and writes them, with a plot, to ``bench/results.md`` / ``bench/results.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import redis

from aiworker import Client
from aiworker.embedded import RedisServer
from bench import batching
from bench import cluster as cluster_bench
from bench import peers as peer_mod
from bench.common import (
    aiworker_worker,
    cpu_per_job,
    latencies,
    markdown_table,
    median_time,
    percentile,
    process,
    redis_cpu,
    throughput,
    torchscript_bytes,
    wait_until,
)

HERE = Path(__file__).resolve().parent
ORDER = ("inprocess", "floor", "diy", "celery", "aiworker", "aiworker_dag", "aiworker_run")


def scenario_latency(peers: dict[str, object], n: int) -> tuple[str, dict[str, float]]:
    rows, p50s = [], {}
    for key in ORDER:
        peer = peers[key]
        samples = latencies(peer.caller(), n)  # type: ignore[attr-defined]
        p50, p99 = percentile(samples, 50) * 1000, percentile(samples, 99) * 1000
        p50s[key] = p50
        rows.append([peer.name, p50, p99])  # type: ignore[attr-defined]
    floor, celery = p50s["floor"], p50s["celery"]
    for row, key in zip(rows, ORDER, strict=True):
        row += [p50s[key] / floor, celery / p50s[key]]
    table = markdown_table(["peer", "p50 ms", "p99 ms", "p50 / floor", "Celery p50 / p50"], rows)
    return table, p50s


def scenario_cpu(peers: dict[str, object], n: int) -> tuple[str, dict[str, float]]:
    """CPU the worker process spends per job (``/proc/<pid>/stat``, every thread), one client
    sending ``n`` requests one after another."""
    per_job: dict[str, float] = {}
    rows = []
    for key in ("floor", "diy", "aiworker", "aiworker_run", "aiworker_dag"):
        peer = peers[key]
        per_job[key] = cpu_per_job(peer.pid, peer.caller(), n)  # type: ignore[attr-defined]
        rows.append([peer.name, per_job[key] * 1e6])  # type: ignore[attr-defined]
    for row, key in zip(
        rows, ("floor", "diy", "aiworker", "aiworker_run", "aiworker_dag"), strict=True
    ):
        row.append(per_job[key] / per_job["diy"])
    table = markdown_table(["worker of", "CPU us per job", "x DIY stream worker"], rows)
    return table, per_job


def scenario_redis_cpu(url: str, peers: dict[str, object], n: int) -> str:
    """Redis's own CPU per job (``INFO cpu``) and the commands behind it (``INFO commandstats``),
    one client sending ``n`` requests one after another: what a job costs the server."""
    r = redis.Redis.from_url(url)
    rows = []
    for key in ("floor", "diy", "aiworker", "aiworker_run"):
        peer = peers[key]
        call = peer.caller()  # type: ignore[attr-defined]
        for _ in range(50):
            call()
        r.config_resetstat()
        started = redis_cpu(r)
        for _ in range(n):
            call()
        used = (redis_cpu(r) - started) / n
        stats = r.info("commandstats")
        top = sorted(((v["usec"], k[len("cmdstat_") :], v["calls"]) for k, v in stats.items()),
                     reverse=True)[:4]  # fmt: skip
        detail = ", ".join(
            f"{name} {usec / n:.0f} us x{calls / n:.0f}" for usec, name, calls in top
        )
        commands = sum(v["calls"] for k, v in stats.items() if "config" not in k) / n
        rows.append([peer.name, used * 1e6, commands, detail])  # type: ignore[attr-defined]
    headers = ["peer", "Redis CPU us per job", "commands per job", "where (per job)"]
    return markdown_table(headers, rows)


def scenario_throughput(
    peers: dict[str, object], seconds: float
) -> tuple[str, dict[tuple[str, int], float]]:
    rates: dict[tuple[str, int], float] = {}
    rows = []
    for key in ORDER[1:]:
        peer = peers[key]
        row: list[object] = [peer.name]  # type: ignore[attr-defined]
        for clients in (8, 32):
            rate = throughput(peer.caller, clients, seconds)  # type: ignore[attr-defined]
            rates[(key, clients)] = rate
            row.append(rate)
        rows.append(row)
    for row, key in zip(rows, ORDER[1:], strict=True):
        row += [rates[(key, 8)] / rates[("celery", 8)], rates[(key, 32)] / rates[("celery", 32)]]
    headers = ["peer", "req/s, 8 clients", "req/s, 32 clients", "x Celery (8)", "x Celery (32)"]
    return markdown_table(headers, rows), rates


def scenario_batching(url: str, seconds: float, width: int, batch: int = 32) -> tuple[str, float]:
    """32 batch-1 clients (4 processes x 8 threads) on a 3-layer MLP with BATCHSIZE 32, against
    the same model run in-process on full batches of 32."""
    import io

    import torch

    blob = batching.mlp_blob(width)
    model = torch.jit.load(io.BytesIO(blob))
    x = torch.randn(batch, width)

    def in_process() -> None:
        with torch.inference_mode():
            model(x)

    in_process(), in_process()
    in_process_rate = batch / median_time(in_process, repeat=30)
    client = Client.from_url(url)
    client.modelstore("bench:mlp:off", "TORCH", "CPU", blob)
    client.modelstore("bench:mlp:on", "TORCH", "CPU", blob, batch=batch)
    worker = batching.start_worker(url, 1)
    clients = batching.Clients(url, 4, 8, width)
    try:
        for key in ("bench:mlp:off", "bench:mlp:on"):
            clients.run(key, 1.5)  # warm up: load the model
        off = clients.run("bench:mlp:off", seconds)
        on = clients.run("bench:mlp:on", seconds)
    finally:
        clients.close()
        worker.terminate()
        worker.wait(30)
    rows = [
        [f"in-process, batches of {batch}", in_process_rate, "", 1.0],
        [
            "aiworker, batching off",
            off["rps"],
            f"{off['per_run']:.1f}",
            off["rps"] / in_process_rate,
        ],
        [
            f"aiworker, BATCHSIZE {batch}",
            on["rps"],
            f"{on['per_run']:.1f}",
            on["rps"] / in_process_rate,
        ],
    ]
    headers = [
        f"3x{width} MLP, 32 batch-1 clients",
        "samples/s",
        "requests per run",
        "x in-process",
    ]
    return markdown_table(headers, rows), on["rps"] / in_process_rate


def scenario_big_tensors(url: str, repeat: int) -> tuple[str, dict[str, float]]:
    """16 MB tensor set + get against raw HSET/HGET of the same bytes."""
    array = np.random.default_rng(1).standard_normal(4 * 1024 * 1024).astype(np.float32)
    blob = array.tobytes()
    client = Client.from_url(url)
    raw = redis.Redis.from_url(url)
    times = {
        "raw HSET": median_time(lambda: raw.hset("raw:big", "blob", blob), repeat),
        "aiworker tensorset": median_time(lambda: client.tensorset("ai:big", array), repeat),
        "raw HGET": median_time(lambda: raw.hget("raw:big", "blob"), repeat),
        "aiworker tensorget": median_time(lambda: client.tensorget("ai:big"), repeat),
    }
    assert np.array_equal(client.tensorget("ai:big"), array)
    rows = [
        ["set 16 MB", times["raw HSET"] * 1000, times["aiworker tensorset"] * 1000,
         times["aiworker tensorset"] / times["raw HSET"]],
        ["get 16 MB", times["raw HGET"] * 1000, times["aiworker tensorget"] * 1000,
         times["aiworker tensorget"] / times["raw HGET"]],
    ]  # fmt: skip
    return markdown_table(["operation", "raw ms", "aiworker ms", "ratio"], rows), times


def big_model_bytes(megabytes: int) -> bytes:
    import torch

    class Big(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(megabytes * 1024 * 1024 // 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.weight[: x.shape[-1]]

    return torchscript_bytes(Big())


def scenario_big_model(url: str, megabytes: int) -> tuple[str, dict[str, float]]:
    """Store a large model and run it once on a fresh worker, against raw transfer + load."""
    import io

    import torch

    blob = big_model_bytes(megabytes)
    client = Client.from_url(url)
    raw = redis.Redis.from_url(url)
    t_raw_set = median_time(lambda: raw.set("raw:model", blob), 3)
    t_store = median_time(lambda: client.modelstore("bench:big", "TORCH", "CPU", blob), 3)

    def raw_fetch_and_load() -> None:
        torch.jit.load(io.BytesIO(raw.get("raw:model")))  # type: ignore[arg-type]

    t_raw_load = median_time(raw_fetch_and_load, 3)
    client.tensorset("big:x", np.ones((1, 4), dtype=np.float32))
    first_runs = []
    for _ in range(2):
        with process(aiworker_worker(url, 1, "--preload", "TORCH", "--device", "CPU:9")):
            wait_until(lambda: any(b"CPU:9" in (raw.get(f"aiworker:worker:{n.decode()}") or b"")
                                   for n in raw.zrange("aiworker:workers", 0, -1)),
                       what="fresh worker")  # fmt: skip
            client.modelstore("bench:big9", "TORCH", "CPU:9", blob)
            started = time.perf_counter()
            client.modelexecute("bench:big9", ["big:x"], ["big:y"])
            first_runs.append(time.perf_counter() - started)
    t_first = float(np.median(first_runs))
    rows = [
        [f"store {megabytes} MB", "raw SET", t_raw_set, t_store, t_store / t_raw_set],
        [f"first run, {megabytes} MB model", "raw GET + torch.jit.load", t_raw_load, t_first,
         t_first / t_raw_load],
    ]  # fmt: skip
    table = markdown_table(["operation", "baseline", "baseline s", "aiworker s", "ratio"], rows)
    return table, {"store": t_store / t_raw_set, "first": t_first / t_raw_load}


def plot(p50s: dict[str, float], rates: dict[tuple[str, int], float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [k for k in ORDER if k in p50s]
    left.bar(names, [p50s[k] for k in names], color="#4477aa")
    left.set_ylabel("p50 latency, ms (lower is better)")
    left.set_title("(1) one client, add two 1x4 tensors")
    left.set_yscale("log")
    keys = [k for k in ORDER[1:]]
    width = 0.38
    xs = np.arange(len(keys))
    right.bar(xs - width / 2, [rates[(k, 8)] for k in keys], width, label="8 clients")
    right.bar(xs + width / 2, [rates[(k, 32)] for k in keys], width, label="32 clients")
    right.set_xticks(xs, keys)
    right.set_ylabel("requests/s (higher is better)")
    right.set_title("(2) throughput, trivial model")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Fewer samples, 64 MB model.")
    parser.add_argument("--threads", type=int, default=2, help="Worker threads for every peer.")
    parser.add_argument("--width", type=int, default=2048, help="MLP width for scenario (3).")
    args = parser.parse_args(argv)
    n = 300 if args.quick else 1000
    seconds = 3.0 if args.quick else 8.0
    megabytes = 64 if args.quick else 500
    sections = [
        f"Machine: {sys.platform}, Python {sys.version.split()[0]}; worker threads per peer: {args.threads}."
    ]
    with RedisServer(extra_args=["--maxmemory-policy", "noeviction"]) as server:
        with peer_mod.started_peers(server.url, args.threads) as peers:
            table1, p50s = scenario_latency(peers, n)
            sections.append("## (1) Latency, one client, trivial model\n\n" + table1)
            print(sections[-1], "\n", flush=True)
            table2, rates = scenario_throughput(peers, seconds)
            sections.append("## (2) Throughput, trivial model\n\n" + table2)
            print(sections[-1], "\n", flush=True)
            table_cpu, _ = scenario_cpu(peers, n + 500)
            sections.append("## Worker CPU per job, one client, trivial model\n\n" + table_cpu)
            print(sections[-1], "\n", flush=True)
            table_redis = scenario_redis_cpu(server.url, peers, n)
            sections.append("## Redis CPU per job, one client, trivial model\n\n" + table_redis)
            print(sections[-1], "\n", flush=True)
        server_url = server.url
        table3, _ = scenario_batching(server_url, seconds, args.width)
        sections.append("## (3) Compute-bound model with batching\n\n" + table3)
        print(sections[-1], "\n", flush=True)
        table4, _ = scenario_big_tensors(server_url, 5)
        sections.append("## (4) 16 MB tensors in and out\n\n" + table4)
        print(sections[-1], "\n", flush=True)
        table5, _ = scenario_big_model(server_url, megabytes)
        sections.append(f"## (5) A {megabytes} MB model blob\n\n" + table5)
        print(sections[-1], "\n", flush=True)
    table7, _ = cluster_bench.run(16, seconds)
    sections.append("## (7) Redis Cluster: queue_partitions 1 vs 3\n\n" + table7)
    print(sections[-1], "\n", flush=True)
    (HERE / "results.md").write_text("\n\n".join(sections) + "\n")
    plot(p50s, rates, HERE / "results.png")
    print(f"wrote {HERE / 'results.md'} and {HERE / 'results.png'}")


if __name__ == "__main__":
    main()
