"""One worker process serves models of all four backends (TF and torch in one process) and
scripts, and ``aiworker info --backends`` lists them with their versions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import (
    IRIS_X,
    onnx_mul,
    sklearn_classifier,
    tf_mul_graph,
    tflite_expected,
    tflite_model,
)
from click.testing import CliRunner
from conftest import spawn_worker, torch_blob, wait_until

from aiworker import Client
from aiworker.cli import main, worker_statuses

BACKENDS = ("TORCH", "TF", "TFLITE", "ONNX")

for module in ("torch", "tensorflow", "onnxruntime", "skl2onnx"):
    pytest.importorskip(module)


def test_all_backends_in_one_worker_process(client: Client, redis_server) -> None:  # type: ignore[no-untyped-def]
    # Built before the worker starts: the two processes would otherwise share the 2 CPUs.
    blobs = {
        "tf": tf_mul_graph(),
        "tflite": tflite_model(),
        "onnx": onnx_mul(),
        "clf": sklearn_classifier()[0],
        "torch": torch_blob("add"),
    }
    preload = [arg for name in BACKENDS for arg in ("--preload", name)]
    proc = spawn_worker(redis_server.url, *preload, "--threads-per-queue", "2")
    try:
        wait_until(lambda: worker_statuses(client), timeout=90, interval=0.2)
        result = CliRunner().invoke(main, ["info", "--backends", "--redis-url", redis_server.url])
        assert result.exit_code == 0, result.output
        versions = json.loads(result.output)
        assert set(versions) == set(BACKENDS)
        assert all(versions[name] for name in BACKENDS)  # each with its framework's version
        assert versions["TORCH"].startswith(__import__("torch").__version__.split("+")[0])

        client.tensorset("a", np.array([2, 3], dtype=np.float32))
        client.tensorset("b", np.array([2, 3], dtype=np.float32))
        client.modelstore("tf", "TF", "CPU", blobs["tf"], inputs=["a", "b"], outputs=["mul"])
        client.modelstore("onnx", "ONNX", "CPU", blobs["onnx"])
        client.modelstore("torch", "TORCH", "CPU", blobs["torch"])
        client.modelstore("tflite", "TFLITE", "CPU", blobs["tflite"])
        client.modelstore("clf", "ONNX", "CPU", blobs["clf"])
        client.scriptstore(
            "script",
            "CPU",
            "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
            "    return tensors[0] - tensors[1]\n",
            ["f"],
        )
        x = IRIS_X[[0, 50]]
        client.tensorset("x", x)
        client.modelexecute("tf", ["a", "b"], ["tf_out"])
        client.modelexecute("onnx", ["a", "b"], ["onnx_out"])
        client.modelexecute("torch", ["a", "b"], ["torch_out"])
        client.modelexecute("tflite", ["x"], ["tflite_out"])
        client.modelexecute("clf", ["x"], ["label", "proba"])
        client.scriptexecute("script", "f", inputs=["a", "b"], outputs=["script_out"])
        assert client.tensorget("tf_out").tolist() == [4, 9]
        assert client.tensorget("onnx_out").tolist() == [4, 9]
        assert client.tensorget("torch_out").tolist() == [4, 6]
        np.testing.assert_allclose(client.tensorget("tflite_out"), tflite_expected(x), rtol=1e-5)
        assert client.tensorget("label").tolist() == [0, 2]
        assert client.tensorget("proba").shape == (2, 3)
        assert client.tensorget("script_out").tolist() == [0, 0]
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
