"""TFLITE backend through a worker: float and quantized models, dynamic shapes, RedisAI's errors."""

from __future__ import annotations

import numpy as np
import pytest
from builders import tf_mul_graph, tflite_expected, tflite_model
from conftest import store_unchecked

from aiworker import AIError, Client, JobFailed, Settings, Worker
from aiworker.backends import util
from aiworker.backends.base import BackendOptions, ModelSpec
from aiworker.devices import parse_device

pytest.importorskip("tensorflow")  # to build the models; the backend itself runs on LiteRT

X = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.0, 0.9]], dtype=np.float32)


def test_float_model_with_dynamic_batch(client: Client, worker: Worker) -> None:
    client.modelstore("m", "TFLITE", "CPU", tflite_model())
    client.tensorset("x", X)
    assert client.modelexecute("m", ["x"], ["y"]) == "OK"
    np.testing.assert_allclose(client.tensorget("y"), tflite_expected(X), rtol=1e-5)
    client.tensorset("x1", X[:1])  # another batch size: the input is resized
    client.modelexecute("m", ["x1"], ["y1"])
    np.testing.assert_allclose(client.tensorget("y1"), tflite_expected(X[:1]), rtol=1e-5)
    info = client.infoget("m")
    assert (info["backend"], info["calls"], info["samples"]) == ("TFLITE", 2, 3)


def test_quantized_model(client: Client, worker: Worker) -> None:
    """Full int8 model: float inputs are quantized with the input's scale and zero point, the
    int8 output comes back as stored (dequantize with the model's output parameters)."""
    from aiworker.backends.tflite import Interpreter

    blob = tflite_model(quantized=True)
    details = Interpreter(model_content=blob).get_output_details()[0]
    scale, zero_point = details["quantization"]
    client.modelstore("q", "TFLITE", "CPU", blob)
    client.tensorset("x", X)
    client.modelexecute("q", ["x"], ["y"])
    raw = client.tensorget("y")
    assert raw.dtype == np.int8
    dequantized = (raw.astype(np.float32) - zero_point) * scale
    np.testing.assert_allclose(dequantized, tflite_expected(X), atol=0.05)
    # int8 data the caller quantized itself is used as is
    client.tensorset("xq", np.full((1, 4), -128, dtype=np.int8))
    client.modelexecute("q", ["xq"], ["yq"])
    assert client.tensorget("yq").shape == (1, 3)


def test_wrong_input_type(client: Client, worker: Worker) -> None:
    client.modelstore("m", "TFLITE", "CPU", tflite_model())
    client.tensorset("x", np.ones((1, 4), dtype=np.int32))
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["x"], ["y"])
    assert str(info.value) == "TFLITE: input 0 expects FLOAT data, got INT32"


def test_errors_and_keeps_serving(client: Client, worker: Worker) -> None:
    with pytest.raises(AIError, match=r"^Failed to load model from buffer$"):
        client.modelstore("bad", "TFLITE", "CPU", tf_mul_graph())  # RedisAI's test: a TF graph
    store_unchecked(client, "bad", "TFLITE", tf_mul_graph())
    client.tensorset("x", X)
    with pytest.raises(JobFailed) as info:
        client.modelexecute("bad", ["x"], ["y"])
    assert str(info.value) == "Failed to load model from buffer"
    client.modelstore("m", "TFLITE", "CPU", tflite_model())
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["x", "x", "x"], ["y"])
    assert str(info.value) == "Number of keys given as INPUTS here does not match model definition"
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["x"], ["y", "z"])
    assert str(info.value) == "Number of keys given as OUTPUTS here does not match model definition"
    assert client.modelexecute("m", ["x"], ["y"]) == "OK"


def test_no_autobatching(client: Client) -> None:
    with pytest.raises(AIError) as info:
        client.modelstore("m", "TFLITE", "CPU", tflite_model(), batch=2, minbatch=2)
    assert str(info.value) == "Auto-batching not supported by the TFLITE backend"


def test_gpu_is_refused(client: Client, settings: Settings) -> None:
    """The Python LiteRT runtime has no GPU delegate: a GPU model gets an error, not the CPU."""
    w = Worker(settings.replace(devices=("GPU:0",))).start()
    try:
        client.modelstore("m", "TFLITE", "GPU:0", tflite_model())
        client.tensorset("x", X)
        with pytest.raises(JobFailed) as info:
            client.modelexecute("m", ["x"], ["y"])
    finally:
        w.stop(timeout=10)
    assert str(info.value) == "TFLITE backend does not support device GPU:0"


def test_threads_and_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiworker.backends.tflite import TFLiteBackend

    spec = ModelSpec("m", parse_device("CPU"))
    model = TFLiteBackend(BackendOptions(intra_op_parallelism=1)).load(tflite_model(), spec)
    assert model.num_threads == 1  # type: ignore[attr-defined]
    slow = TFLiteBackend(BackendOptions(model_execution_timeout_ms=5)).load(tflite_model(), spec)
    ticks = iter(range(0, 1000, 1))  # each clock read is one second later: every run is "slow"
    monkeypatch.setattr(util, "_clock", lambda: float(next(ticks)))
    with pytest.raises(AIError, match=r"more than MODEL_EXECUTION_TIMEOUT \(5 ms\)"):
        slow.run([X])
    assert model.run([X])[0].shape == (2, 3)  # no limit: no check


def test_a_failed_run_does_not_grow_the_next_ones_error() -> None:
    """An interpreter repeats every error it reported in the next one's text: the reply to each
    failure on the same model grew by a copy (10 copies after 10 failures)."""
    from aiworker.backends.tflite import TFLiteBackend

    model = TFLiteBackend(BackendOptions()).load(
        tflite_model(), ModelSpec("m", parse_device("CPU"))
    )
    wrong = np.ones((2, 5), np.float32)  # 10 values: no rows of 4
    errors = []
    for _ in range(3):
        with pytest.raises(AIError) as info:
            model.run([wrong])
        errors.append(str(info.value))
    assert errors[0] == errors[1] == errors[2], errors
    assert model.run([X])[0].shape == (2, 3)
