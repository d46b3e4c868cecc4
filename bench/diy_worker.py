"""The stream worker a redis-py user would write in an afternoon: XREADGROUP a job, read its
inputs (one pipelined round trip), run the TorchScript model, then one MULTI with HSET output + LPUSH reply + XACK + XDEL.

Same consumer-group delivery as aiworker (a crashed worker's job stays pending), none of the rest
(no reclaim, limits, type checks, statistics, batching, exactly-once completion)."""

from __future__ import annotations

import contextlib
import io
import sys
import threading

import numpy as np
import redis
import torch

STREAM, GROUP = "diy:queue", "diy"


def serve(url: str, consumer: str, model: torch.jit.ScriptModule, device: str = "cpu") -> None:
    r = redis.Redis.from_url(url, socket_timeout=None)
    while True:
        try:
            handle(r, consumer, model, device)
        except redis.RedisError as exc:  # keep serving, as a real worker loop would
            print(f"diy worker: {exc!r}", file=sys.stderr)


def handle(r: redis.Redis, consumer: str, model: torch.jit.ScriptModule, device: str) -> None:
    read = r.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=1, block=1000)
    for _stream, entries in read or []:
        for entry_id, job in entries:
            inputs = job[b"inputs"].split(b",")
            shape = [int(d) for d in job[b"shape"].split(b",")]
            pipe = r.pipeline(transaction=False)  # every input in one round trip
            for key in inputs:
                pipe.hget(key, "blob")
            blobs = pipe.execute()
            tensors = [
                torch.from_numpy(np.frombuffer(b, dtype=np.float32).reshape(shape).copy()).to(
                    device
                )
                for b in blobs
            ]
            with torch.inference_mode():
                out = model(*tensors).cpu().numpy()
            pipe = r.pipeline(transaction=True)
            out_shape = ",".join(map(str, out.shape))
            pipe.hset(job[b"output"], mapping={"shape": out_shape, "blob": out.tobytes()})
            pipe.lpush(job[b"reply"], b"ok")
            pipe.xack(STREAM, GROUP, entry_id)
            pipe.xdel(STREAM, entry_id)
            pipe.execute()


def main() -> None:
    url, threads, model_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"  # a torch device: cpu, cuda, cuda:1
    with open(model_path, "rb") as stream:
        model = torch.jit.load(io.BytesIO(stream.read()), map_location=device)
    r = redis.Redis.from_url(url)
    with contextlib.suppress(redis.ResponseError):
        r.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    workers = [
        threading.Thread(target=serve, args=(url, f"c{i}", model, device), daemon=True)
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
