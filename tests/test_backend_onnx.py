"""ONNX backend through a worker: onnx.helper graphs, ONNX-ML classifiers, RedisAI's errors,
the execution-timeout kill switch and the memory limit."""

from __future__ import annotations

import re

import numpy as np
import pytest
from builders import (
    IRIS_X,
    onnx_empty_optional,
    onnx_external_data,
    onnx_loop,
    onnx_mul,
    onnx_unstorable_outputs,
    sklearn_classifier,
)
from conftest import store_unchecked

from aiworker import AIError, Client, JobFailed, Settings, Worker
from aiworker.backends.base import BackendOptions
from aiworker.devices import gpu_count
from aiworker.protocol import messages

ort = pytest.importorskip("onnxruntime")


def set_ab(client: Client) -> None:
    client.tensorset("a", np.array([2, 3], dtype=np.float32))
    client.tensorset("b", np.array([2, 3], dtype=np.float32))


def test_helper_graph_mul(client: Client, worker: Worker) -> None:
    client.modelstore("m", "ONNX", "CPU", onnx_mul())
    set_ab(client)
    assert client.modelexecute("m", ["a", "b"], ["c"]) == "OK"
    assert client.tensorget("c").tolist() == [4, 9]
    info = client.infoget("m")
    assert (info["backend"], info["calls"], info["samples"]) == ("ONNX", 1, 2)


def test_classifier_label_and_probabilities(client: Client, worker: Worker) -> None:
    """skl2onnx's probability output is a sequence of {label: p} maps: it comes back as an
    (n_samples, n_classes) tensor next to the label tensor."""
    blob, classifier = sklearn_classifier()
    client.modelstore("clf", "ONNX", "CPU", blob)
    rows = IRIS_X[[0, 25, 50]]
    client.tensorset("features", rows)
    client.modelexecute("clf", ["features"], ["label", "proba"])
    assert client.tensorget("label").tolist() == [0, 1, 2]
    proba = client.tensorget("proba")
    assert proba.dtype == np.float32 and proba.shape == (3, 3)
    np.testing.assert_allclose(proba, classifier.predict_proba(rows), rtol=1e-4, atol=1e-6)


def test_classifier_with_string_labels(client: Client, worker: Worker) -> None:
    blob, classifier = sklearn_classifier(string_labels=True)
    client.modelstore("clf", "ONNX", "CPU", blob)
    client.tensorset("features", IRIS_X[[0, 50]])
    client.modelexecute("clf", ["features"], ["label", "proba"])
    labels = client.tensorget("label", as_numpy=False)
    assert (labels["dtype"], labels["values"]) == ("STRING", ["setosa", "virginica"])
    np.testing.assert_allclose(
        client.tensorget("proba"), classifier.predict_proba(IRIS_X[[0, 50]]), rtol=1e-4, atol=1e-6
    )


RUN_ERRORS = [
    (np.array([2, 3], dtype=np.float64), "Unexpected input data type. Actual: (tensor(double)) , expected: (tensor(float))"),
    (np.array([2, 3, 4], dtype=np.float32), "Attempting to broadcast an axis by a dimension other than 1. 2 by 3"),
]  # fmt: skip


@pytest.mark.parametrize(("a", "message"), RUN_ERRORS)
def test_run_errors(client: Client, worker: Worker, a: np.ndarray, message: str) -> None:
    client.modelstore("m", "ONNX", "CPU", onnx_mul())
    set_ab(client)
    client.tensorset("a", a)
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["a", "b"], ["c"])
    assert message in str(info.value)
    assert "[ONNXRuntimeError]" not in str(info.value)
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["a"], ["c"])
    assert str(info.value) == "Number of keys given as INPUTS here does not match model definition"


LOAD_ERRORS = [
    # RedisAI's test stores a TF GraphDef as ONNX: this one is {node {name: "a" op: "Placeholder"}}
    (b"\n\x10\n\x01a\x12\x0bPlaceholder", "No graph was found in the protobuf."),
    (b"\xff\xfe garbage", "Failed to load model because protobuf parsing failed."),
]


def test_unstorable_outputs_fail_the_job(client: Client, worker: Worker) -> None:
    """An output with an empty dimension written to a key, or a STRING element holding a NUL,
    fails its job with an error naming it, instead of leaving the job unanswered (the completion
    could not encode it) or writing a tensor no reader takes."""
    client.modelstore("m", "ONNX", "CPU", onnx_unstorable_outputs())
    client.tensorset("zeros", np.zeros(3, np.float32))
    client.tensorset("ones", np.ones(3, np.float32))
    empty = "output tensor 'idx' of shape [1, 0] cannot be stored: " + messages.INVALID_SHAPE
    nul = "output tensor 's' of shape [2] cannot be stored: " + messages.STRING_NUL
    with pytest.raises(JobFailed, match=re.escape(empty)):
        client.modelexecute("m", ["zeros"], ["idx", "s"], timeout=5000)
    with pytest.raises(JobFailed, match=re.escape(nul)):
        client.modelexecute("m", ["ones"], ["idx", "s"], timeout=5000)
    # a DAG's own tensors may have no rows (RedisAI ran models on them), never a NUL inside
    with pytest.raises(JobFailed, match=re.escape(nul.replace("'s'", "'t'"))):
        client.run("m", {"x": np.zeros(3, np.float32)}, ["i", "t"], timeout=5000)
    assert not client.exists("idx", "s")
    assert client.infoget("m")["errors"] == 3


def test_an_empty_optional_output_fails_the_job(client: Client, worker: Worker) -> None:
    client.modelstore("m", "ONNX", "CPU", onnx_empty_optional())
    client.tensorset("x", np.ones(2, np.float32))
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["x"], ["o", "y"])
    assert str(info.value) == "ONNX: output of type optional(tensor(float)) holds no value"


@pytest.mark.parametrize(("blob", "message"), LOAD_ERRORS)
def test_corrupt_blob_then_keeps_serving(
    client: Client, worker: Worker, blob: bytes, message: str
) -> None:
    with pytest.raises(AIError) as refused:  # RedisAI refused a model it could not load
        client.modelstore("bad", "ONNX", "CPU", blob)
    assert str(refused.value) == message
    store_unchecked(client, "bad", "ONNX", blob)  # written by hand: the worker refuses it too
    set_ab(client)
    with pytest.raises(JobFailed) as info:
        client.modelexecute("bad", ["a", "b"], ["c"])
    assert str(info.value) == message
    client.modelstore("good", "ONNX", "CPU", onnx_mul())
    assert client.modelexecute("good", ["a", "b"], ["c"]) == "OK"


def test_external_data_refused(client: Client, worker: Worker, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Even with the file present in the worker's working directory, it is never read.
    (tmp_path / "weights.bin").write_bytes(np.ones(3, np.float32).tobytes())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AIError, match=r"^ONNX models with external data"):
        client.modelstore("ext", "ONNX", "CPU", onnx_external_data())
    store_unchecked(client, "ext", "ONNX", onnx_external_data())
    client.tensorset("a", np.ones(3, np.float32))
    with pytest.raises(JobFailed) as info:
        client.modelexecute("ext", ["a"], ["c"])
    assert str(info.value).startswith("ONNX models with external data")


def loop_inputs(client: Client, iterations: int) -> None:
    client.tensorset("n", np.array(iterations, dtype=np.int64))
    client.tensorset("cond", np.array(True))
    client.tensorset("v", np.zeros(1, np.float32))


def test_execution_timeout_terminates(client: Client, settings: Settings) -> None:
    """RedisAI's kill switch: a run past MODEL_EXECUTION_TIMEOUT is terminated; others still run."""
    w = Worker(settings.replace(model_execution_timeout=200)).start()
    try:
        client.modelstore("loop", "ONNX", "CPU", onnx_loop())
        loop_inputs(client, 2**62)
        with pytest.raises(JobFailed) as info:
            client.modelexecute("loop", ["n", "cond", "v"], ["out"])
        assert str(info.value) == (
            "Exiting due to terminate flag being set to true: "
            "MODEL_EXECUTION_TIMEOUT (200 ms) exceeded"
        )
        loop_inputs(client, 5)
        client.modelexecute("loop", ["n", "cond", "v"], ["out"])
        assert client.tensorget("out").tolist() == [5]
        assert client.infoget("loop")["errors"] == 1
    finally:
        w.stop(timeout=10)


def test_session_options() -> None:
    from aiworker.backends.onnx import ONNXBackend

    options = ONNXBackend(BackendOptions(inter_op_parallelism=2, intra_op_parallelism=1))
    so = options.session_options()
    assert (so.inter_op_num_threads, so.intra_op_num_threads) == (2, 1)
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL


def test_memory_limit(redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """BACKEND_MEMORY_LIMIT caps the arena in a worker process of its own (the arena is per
    process)."""
    from conftest import spawn_worker, wait_until

    client = Client.from_url(redis_server.url, reply_timeout=60)
    client.flushall()
    proc = spawn_worker(
        redis_server.url,
        "--preload",
        "ONNX",
        AIWORKER_BACKEND_MEMORY_LIMIT="4",
        AIWORKER_BLOCK_MS="100",
    )
    try:
        wait_until(lambda: client.zcard(client.keyspace.workers) > 0, timeout=30)
        client.modelstore("m", "ONNX", "CPU", onnx_mul())
        client.tensorset("small", np.ones(1000, np.float32))
        assert client.modelexecute("m", ["small", "small"], ["c"]) == "OK"
        client.tensorset("big", np.ones(2 << 20, np.float32))  # 8 MB in, 8 MB out
        with pytest.raises(JobFailed) as info:
            client.modelexecute("m", ["big", "big"], ["c"])
        assert str(info.value).startswith("BACKEND_MEMORY_LIMIT (4 MB) exceeded: ")
        assert "Available memory of" in str(info.value)
        assert client.modelexecute("m", ["small", "small"], ["c"]) == "OK"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        client.close()


def test_gpu_refused_when_absent(client: Client, settings: Settings) -> None:
    if gpu_count("onnx"):
        pytest.skip("a GPU is present: the refusal path needs a host without one")
    w = Worker(settings.replace(devices=("GPU:1",))).start()
    try:
        client.modelstore("m", "ONNX", "GPU:1", onnx_mul())
        set_ab(client)
        with pytest.raises(JobFailed) as info:
            client.modelexecute("m", ["a", "b"], ["c"])
    finally:
        w.stop(timeout=10)
    assert (
        str(info.value)
        == "device GPU:1 is not available on this worker host (onnxruntime found 0 GPUs)"
    )


def test_gpu_run(client: Client, settings: Settings) -> None:
    if not gpu_count("onnx"):
        pytest.skip("no GPU present: onnxruntime has no CUDA provider or the host no GPU")
    w = Worker(settings.replace(devices=("GPU",))).start()
    try:
        client.modelstore("m", "ONNX", "GPU", onnx_mul())
        set_ab(client)
        client.modelexecute("m", ["a", "b"], ["c"])
        assert client.tensorget("c").tolist() == [4, 9]
    finally:
        w.stop(timeout=10)


def test_non_tensor_output_conversions() -> None:
    from aiworker.backends.onnx import ort_error_text, to_tensor

    assert to_tensor({1: 0.25, 2: 0.75}, "map(int64,tensor(float))").tolist() == [0.25, 0.75]
    stacked = to_tensor([np.ones(2), np.zeros(2)], "seq(tensor(double))")
    assert stacked.shape == (2, 2) and stacked.dtype == np.float64
    rows = to_tensor([{"a": 1.0, "b": 0.0}], "seq(map(string,tensor(float)))")
    assert rows.dtype == np.float32 and rows.tolist() == [[1.0, 0.0]]
    text = "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/x/bfc_arena.cc:360 void* f(size_t) Out"
    assert ort_error_text(RuntimeError(text)) == "Out"
