"""``Client.run``: a model on arrays in one round trip, without touching the keyspace."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import stub_blob, torch_blob
from redis.exceptions import ResponseError

from aiworker import Client, JobFailed, Worker
from aiworker.parser.entry import decode_entry
from aiworker.protocol import entries, replies


def test_run_returns_the_outputs_and_writes_no_key(client: Client, worker: Worker) -> None:
    client.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    before = set(client.keys("*"))
    a = np.array([[1, 2], [3, 4]], np.float32)
    out = client.run("m", {"a": a, "b": a * 10}, ["c"])
    assert list(out) == ["c"] and out["c"].tolist() == [[11, 22], [33, 44]]
    assert out["c"].dtype == np.float32
    # outputs came in the reply: only the queue and the statistics are new
    assert set(client.keys("*")) - before <= {b"aiworker:queue:CPU", b"aiworker:stats:{m}"}
    assert client.infoget("m")["calls"] == 1


def test_run_errors(client: Client, worker: Worker) -> None:
    with pytest.raises(ResponseError, match=r"^model key is empty$"):  # before anything is sent
        client.run("nope", {"a": np.ones(2, np.float32)}, ["c"])
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    with pytest.raises(JobFailed):
        client.run("m", {"a": np.ones(2, np.float32)}, ["c"])  # add needs two inputs
    with pytest.raises(TypeError, match=r"^RedisAI doesn't support tensors of type float16$"):
        client.run("m", {"a": np.ones(2, np.float16)}, ["c"])
    queued = client.xlen("aiworker:queue:CPU")
    # no inputs or no outputs: RedisAI's MODELEXECUTE errors, and nothing queued
    with pytest.raises(ResponseError, match=r"^wrong number of arguments for 'AI.MODELEXECUTE'"):
        client.run("m", {}, ["c"])
    with pytest.raises(ResponseError, match=r"^Output count must be a positive integer$"):
        client.run("m", {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}, [])
    assert client.xlen("aiworker:queue:CPU") == queued


def test_entries_ask_for_msgpack_replies(client: Client) -> None:
    """The Python client's entries carry ``fmt=msgpack``: the worker then replies in msgpack,
    raw bytes for tensor blobs, never spilling them to keys."""
    from aiworker.protocol.requests import ModelExecute

    fields = entries.encode_entry(ModelExecute("m", ("a",), ("b",)), "r", replies.MSGPACK)
    assert fields[replies.FORMAT_FIELD] == "msgpack" and fields["reply"] == "r"
    assert replies.FORMAT_FIELD not in entries.encode_entry(ModelExecute("m", (), ()), "r")
    job = decode_entry("1-0", fields)
    assert job.request == ModelExecute("m", ("a",), ("b",)) and job.reply == "r"
