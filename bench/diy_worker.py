"""The do-it-yourself loop a redis-py user would write: BLPOP a job, GET the inputs,
deserialize, run the TorchScript model, serialize, SET the output, LPUSH a reply."""

from __future__ import annotations

import io
import json
import sys
import threading

import numpy as np
import redis
import torch


def serve(url: str, model: torch.jit.ScriptModule) -> None:
    r = redis.Redis.from_url(url, socket_timeout=None)
    while True:
        try:
            handle(r, model)
        except redis.RedisError as exc:  # keep serving, as a real worker loop would
            print(f"diy worker: {exc!r}", file=sys.stderr)


def handle(r: redis.Redis, model: torch.jit.ScriptModule) -> None:
    popped = r.blpop(["diy:jobs"], timeout=1)
    if popped is None:
        return
    job = json.loads(popped[1])
    blobs = r.mget(job["inputs"])
    tensors = [
        torch.from_numpy(np.frombuffer(b, dtype=np.float32).reshape(job["shape"]).copy())
        for b in blobs
    ]
    with torch.inference_mode():
        out = model(*tensors).numpy()
    pipe = r.pipeline(transaction=False)
    pipe.set(job["output"], out.tobytes())
    pipe.lpush(job["reply"], b"ok")
    pipe.execute()


def main() -> None:
    url, threads, model_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(model_path, "rb") as stream:
        model = torch.jit.load(io.BytesIO(stream.read()))
    workers = [
        threading.Thread(target=serve, args=(url, model), daemon=True) for _ in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
