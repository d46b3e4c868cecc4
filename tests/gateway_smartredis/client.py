"""SmartRedis (SmartSim's RedisAI client: C++ on redis-plus-plus and hiredis, used here through
its Python binding) against the gateway: what a SmartSim application does with RedisAI.

    python client.py HOST:PORT|unix://PATH cluster|standalone MODEL_PATH

MODEL_PATH: a TorchScript module adding its two inputs.
Runs in its own environment (SmartRedis 0.6.1 needs numpy < 2 and Python < 3.12; see
requirements.txt). Exits non-zero at the first thing that differs from RedisAI, and prints
``all RedisAI commands ok`` at the end.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from smartredis import Client, Dataset
from smartredis.error import RedisReplyError, RedisRuntimeError

address, mode, model_path = sys.argv[1], sys.argv[2], sys.argv[3]
cluster = mode == "cluster"
os.environ["SSDB"] = address
os.environ["SR_DB_TYPE"] = "Clustered" if cluster else "Standalone"
client = Client(cluster, address)


def fails(call, *args, contains: str) -> None:
    """``call(*args)`` raises SmartRedis' reply error carrying RedisAI's message."""
    try:
        call(*args)
    except RedisReplyError as exc:
        assert contains in str(exc), str(exc)
    else:
        raise AssertionError(f"{call.__name__}{args} did not fail")


def double(tensor):
    """TorchScript: set_function sends this function's source."""
    return tensor + tensor


# tensors: every type SmartRedis sends (it maps numpy dtypes to RedisAI's type names)
for dtype in (np.float64, np.float32, np.int64, np.int32, np.int16, np.int8, np.uint16, np.uint8):
    array = (np.arange(24).reshape(2, 3, 4) % 11).astype(dtype)
    client.put_tensor(f"t.{dtype.__name__}", array)
    got = client.get_tensor(f"t.{dtype.__name__}")
    assert got.dtype == array.dtype and got.shape == array.shape, (dtype, got)
    assert (got == array).all(), (dtype, got)
assert client.tensor_exists("t.float32") and client.key_exists("t.float32")
assert client.poll_tensor("t.float32", 10, 3)
client.copy_tensor("t.float32", "t.copy")
assert (client.get_tensor("t.copy") == client.get_tensor("t.float32")).all()
client.rename_tensor("t.copy", "t.renamed")
assert not client.tensor_exists("t.copy") and client.tensor_exists("t.renamed")
client.delete_tensor("t.renamed")
assert not client.tensor_exists("t.renamed")
fails(client.get_tensor, "nope", contains="tensor key is empty")

# models: stored (checked by a worker), fetched, run, with batching settings and a tag
with open(model_path, "rb") as model_file:
    blob = model_file.read()
client.set_model("m", blob, "TORCH", "CPU")
assert client.model_exists("m") and client.poll_model("m", 10, 3)
assert client.get_model("m") == blob
x = np.arange(6, dtype=np.float32).reshape(2, 3)
client.put_tensor("x", x)
client.run_model("m", ["x", "x"], ["y"])
assert (client.get_tensor("y") == x * 2).all()
client.set_model("mb", blob, "TORCH", "CPU", batch_size=8, min_batch_size=1,
                 min_batch_timeout=5, tag="v1")  # fmt: skip
client.run_model("mb", ["x", "x"], "yb")
assert (client.get_tensor("yb") == x * 2).all()
fails(client.run_model, "nope", ["x"], ["y"], contains="model key is empty")
fails(client.set_model, "bad", b"not a TorchScript archive", "TORCH", "CPU",
      contains="Failed to load TorchScript model")  # fmt: skip
assert not client.model_exists("bad")
info = client.get_ai_info([address], "m")[0]
assert info["key"] == "m" and info["type"] == "MODEL" and info["backend"] == "TORCH", info
assert int(info["calls"]) == 1 and int(info["samples"]) == 2, info
# AI.INFO RESETSTAT answers +OK as RedisAI did; SmartRedis 0.6.1 reads every AI.INFO reply as a
# map and raises on that one, after the reset is done
try:
    client.get_ai_info([address], "m", reset_stat=True)
except RedisRuntimeError as exc:
    assert "REDIS_REPLY_STATUS" in str(exc), str(exc)
assert int(client.get_ai_info([address], "m")[0]["calls"]) == 0

# a model blob in chunks (AI.CONFIG MODEL_CHUNK_SIZE, then AI.MODELSTORE ... BLOB c1 c2 ...)
chunk = 1 + len(blob) // 3
client.set_model_chunk_size(chunk)
client.set_model("chunked", blob, "TORCH", "CPU")
# AI.MODELGET answers with the chunks in order (RedisAI's reply: an array above the chunk size);
# SmartRedis 0.6.1 joins them without advancing its offset, so every chunk lands at the start
# (as it did from RedisAI): the last chunk comes first, the length is right.
fetched = client.get_model("chunked")
assert len(fetched) == len(blob) and fetched.startswith(blob[2 * chunk :])
client.run_model("chunked", ["x", "x"], ["yc"])
assert (client.get_tensor("yc") == x * 2).all()
client.set_model_chunk_size(511 * 1024 * 1024)

# scripts: a function sent as source, and source text with RedisAI 1.0 signatures
client.set_function("f", double)
assert "def double" in client.get_script("f")
client.run_script("f", "double", ["x"], ["z"])
assert (client.get_tensor("z") == x * 2).all()
client.set_script("s", "def add(a, b):\n    return a + b\n")
client.run_script("s", "add", ["x", "y"], ["w"])
assert (client.get_tensor("w") == x * 3).all()
fails(client.set_script, "broken", "def add(a, b:\n", contains="expected ident")
client.delete_script("s")
fails(client.get_script, "s", contains="script key is empty")

# datasets and lists: plain hashes and lists through the gateway
dataset = Dataset("ds")
dataset.add_tensor("a", np.arange(5, dtype=np.float32))
dataset.add_meta_scalar("n", 3)
dataset.add_meta_string("s", "hello")
client.put_dataset(dataset)
assert client.dataset_exists("ds")
got_ds = client.get_dataset("ds")
assert (got_ds.get_tensor("a") == np.arange(5)).all()
assert list(got_ds.get_meta_scalars("n")) == [3] and got_ds.get_meta_strings("s") == ["hello"]
client.append_to_list("L", dataset)
assert client.get_list_length("L") == 1
assert client.get_datasets_from_list("L")[0].get_meta_strings("s") == ["hello"]

# the database itself
assert "Keyspace" in client.get_db_node_info([address])[0]
assert "maxmemory" in client.config_get("maxmemory", address)
if cluster:
    assert client.get_db_cluster_info([address])[0]["cluster_state"] == "ok"
client.delete_model("m")
assert not client.model_exists("m")
client.flush_db([address])
assert not client.tensor_exists("x")
print("all RedisAI commands ok")
