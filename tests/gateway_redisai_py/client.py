"""redisai-py 1.3 (RedisAI's own Python client, on redis-py 4) against the gateway: a program
written for RedisAI, with only the address changed.

    python client.py HOST PORT MODEL_PATH

MODEL_PATH: a TorchScript module adding its two inputs. Runs in its own environment (redisai 1.3
pins redis < 5; see requirements.txt). Exits non-zero at the first thing that differs from what
RedisAI gave this client, and prints ``all redisai-py calls ok`` at the end.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
from redis.exceptions import ResponseError
from redisai import Client

host, port, model_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
con = Client(host=host, port=port)
with open(model_path, "rb") as file:
    blob = file.read()
warnings.simplefilter("ignore", DeprecationWarning)  # modelset, scriptset, modelrun, ...

SCRIPT = """
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + tensors[1]
"""
SCRIPT_OLD = """
def bar(a, b):
    return a + b
"""


def fails(call, *args, contains: str, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except ResponseError as exc:
        assert contains in str(exc), str(exc)
    else:
        raise AssertionError(f"{call.__name__}{args} did not fail")


# tensors
assert con.tensorset("x", np.array([[1, 2], [3, 4]], dtype=np.float32)) == "OK"
assert con.tensorset("i", (1, 2, 3), dtype="int8", shape=(3,)) == "OK"
assert con.tensorset("f", [1.5, 2.5], dtype="float64") == "OK"
x = con.tensorget("x")
assert x.dtype == np.float32 and x.tolist() == [[1, 2], [3, 4]], x
assert con.tensorget("i").tolist() == [1, 2, 3]
assert con.tensorget("x", meta_only=True) == {"dtype": "FLOAT", "shape": [2, 2]}
assert con.tensorget("f", as_numpy=False) == {"dtype": "DOUBLE", "shape": [2], "values": [1.5, 2.5]}
mutable = con.tensorget("x", as_numpy_mutable=True)
mutable[0, 0] = 9  # a writable copy
fails(con.tensorget, "nope", contains="tensor key is empty")

# models
assert con.modelstore("m", "torch", "cpu", blob, tag="v1") == "OK"
meta = con.modelget("m", meta_only=True)
assert meta["backend"] == "TORCH" and meta["tag"] == "v1", meta
assert meta["inputs"] == ["a", "b"] and meta["outputs"] == [""], meta  # as RedisAI listed them
assert con.modelget("m")["blob"] == blob
assert con.modelexecute("m", ["x", "x"], ["y"]) == "OK"
assert con.tensorget("y").tolist() == [[2, 4], [6, 8]]
assert con.modelset("m_old", "torch", "cpu", blob) == "OK"
assert con.modelrun("m_old", ["x", "x"], ["y2"]) == "OK"
assert con.tensorget("y2").tolist() == [[2, 4], [6, 8]]
fails(con.modelexecute, "m", ["x"], ["y"], contains="Number of keys given as INPUTS")
fails(con.modelexecute, "none", ["x", "x"], ["y"], contains="model key is empty")
fails(con.modelstore, "bad", "torch", "cpu", b"not a model", contains="")
info = con.infoget("m")
assert info["key"] == "m" and info["type"] == "MODEL" and info["calls"] == 1, info
assert con.inforeset("m") == "OK" and con.infoget("m")["calls"] == 0
assert sorted(con.modelscan()) == [["m", "v1"], ["m_old", ""]]
assert con.modeldel("m_old") == "OK"

# scripts
assert con.scriptstore("s", "cpu", SCRIPT, "bar", tag="t1") == "OK"
assert con.scriptget("s", meta_only=True)["entry points"] == [b"bar"]  # redisai-py's reading
assert con.scriptexecute("s", "bar", inputs=["x", "x"], outputs=["z"]) == "OK"
assert con.tensorget("z").tolist() == [[2, 4], [6, 8]]
assert con.scriptset("s_old", "cpu", SCRIPT_OLD) == "OK"
assert con.scriptrun("s_old", "bar", ["x", "x"], ["z2"]) == "OK"
assert con.tensorget("z2").tolist() == [[2, 4], [6, 8]]
fails(
    con.scriptexecute,
    "s",
    "nope",
    inputs=["x"],
    outputs=["z"],
    contains="Function does not exist: nope",
)
assert con.scriptdel("s_old") == "OK"

# DAGs: the results come back in order, tensors as numpy arrays
dag = con.dag(load=["x"], persist=["dz"])
dag.tensorset("k", np.ones((2, 2), np.float32))
dag.modelexecute("m", ["x", "k"], ["dz"])
dag.tensorget("dz")
ok1, ok2, result = dag.execute()
assert (ok1, ok2) == ("OK", "OK") and result.tolist() == [[2, 3], [4, 5]], (ok1, ok2, result)
assert con.tensorget("dz").tolist() == [[2, 3], [4, 5]]
ro = con.dag(load=["x"], readonly=True)
ro.modelexecute("m", ["x", "x"], ["tmp"])
ro.tensorget("tmp", meta_only=True)
meta = ro.execute()[1]  # redisai-py's DAG tensorget(meta_only=True) keeps the blob it asked for
assert (meta["dtype"], meta["shape"]) == ("FLOAT", [2, 2]), meta

# a pipeline mixing RedisAI and plain commands
pipe = con.pipeline(transaction=False)
pipe.tensorset("p", np.arange(3, dtype=np.int32))
pipe.set("plain", "1")
pipe.tensorget("p")
pipe.get("plain")
replies = pipe.execute()
assert replies[0] in (b"OK", "OK") and replies[1] is True, replies
assert list(replies[2]) == [0, 1, 2] and replies[3] == b"1", replies

# configuration
assert con.config("MODEL_CHUNK_SIZE") == 535822336
assert con.config("MODEL_CHUNK_SIZE", len(blob) // 3 + 1) == "OK"
chunks = con.modelget("m")["blob"]  # RedisAI's chunked MODELGET: a list, as redisai-py left it
assert isinstance(chunks, list) and len(chunks) == 3 and b"".join(chunks) == blob, len(chunks)
print("all redisai-py calls ok")
