"""TF backend through a worker: frozen GraphDefs (RedisAI's contract) and zipped SavedModels."""

from __future__ import annotations

import numpy as np
import pytest
from builders import tf_frozen_function, tf_mul_graph, tf_saved_model_zip, tf_slow_graph
from conftest import store_unchecked

from aiworker import AIError, Client, JobFailed, Settings, Worker
from aiworker.backends.base import BackendOptions, ModelSpec
from aiworker.devices import gpu_count, parse_device
from aiworker.parser import parse

tf = pytest.importorskip("tensorflow")


def set_ab(client: Client, values: list[float] | None = None) -> None:
    values = values or [2, 3]
    client.tensorset("a", np.array(values, dtype=np.float32))
    client.tensorset("b", np.array(values, dtype=np.float32))


def test_graph_mul(client: Client, worker: Worker) -> None:
    """RedisAI's graph.pb test: [2, 3] * [2, 3] = [4, 9]."""
    client.modelstore("m", "TF", "CPU", tf_mul_graph(), inputs=["a", "b"], outputs=["mul"])
    set_ab(client)
    assert client.modelexecute("m", ["a", "b"], ["c"]) == "OK"
    assert client.tensorget("c").tolist() == [4, 9]
    assert client.tensorget("c", as_numpy=False)["dtype"] == "FLOAT"
    got = client.modelget("m", meta_only=True)
    assert (got["backend"], got["inputs"], got["outputs"]) == ("TF", ["a", "b"], ["mul"])
    info = client.infoget("m")
    assert (info["backend"], info["calls"], info["samples"], info["errors"]) == ("TF", 1, 2, 0)


def test_tf2_frozen_function_and_tensor_names(client: Client, worker: Worker) -> None:
    client.modelstore("m", "TF", "CPU", tf_frozen_function(), inputs="x:0", outputs="Identity")
    client.tensorset("x", np.array([1, 2, 3], dtype=np.float32))
    client.modelexecute("m", ["x"], ["y"])
    assert client.tensorget("y").tolist() == [3, 6, 9]


def test_runtime_error_is_tensorflows_message(client: Client, worker: Worker) -> None:
    client.modelstore("m", "TF", "CPU", tf_mul_graph(), inputs=["a", "b"], outputs=["mul"])
    client.tensorset("a", np.array([2, 3], dtype=np.float32))
    client.tensorset("b", np.ones((2, 2, 3), dtype=np.float32))
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["a", "b"], ["c"])
    assert str(info.value) == "Incompatible shapes: [2] vs. [2,2,3] \t [[{{node mul}}]]"
    with pytest.raises(JobFailed, match="does not match model definition"):
        client.modelexecute("m", ["a"], ["c"])


def test_a_placeholder_with_default_takes_any_shape_the_graph_runs(
    client: Client, worker: Worker
) -> None:
    """An input that is a PlaceholderWithDefault (declared [2]) is fed as a Placeholder is: the
    graph's own ops judge the value (RedisAI's C API held neither to its declared shape), so a
    1x2 value runs, and one the ops cannot take fails with TensorFlow's error (it failed with
    the Python session's "Cannot feed value of shape" for both)."""
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder_with_default(tf.constant([1.0, 2.0]), shape=[2], name="a")
        b = tf.compat.v1.placeholder(tf.float32, shape=[None, 2], name="b")
        tf.multiply(a, b, name="mul")
    blob = graph.as_graph_def().SerializeToString()
    client.modelstore("m", "TF", "CPU", blob, inputs=["a:0", "b"], outputs=["mul"])
    client.tensorset("a", np.array([[2, 3]], dtype=np.float32))
    client.tensorset("b", np.ones((3, 2), dtype=np.float32))
    assert client.modelexecute("m", ["a", "b"], ["c"]) == "OK"
    assert client.tensorget("c").tolist() == [[2, 3]] * 3
    client.tensorset("a", np.array([1, 2, 3], dtype=np.float32))
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["a", "b"], ["c"])
    assert str(info.value) == "Incompatible shapes: [3] vs. [3,2] \t [[{{node mul}}]]"


STORE_ERRORS = [
    ({"inputs": None}, "INPUTS not specified for TF"),
    ({"outputs": None}, "OUTPUTS not specified for TF"),
    ({"inputs": None, "outputs": None}, "INPUTS not specified for TF"),
]


@pytest.mark.parametrize(("kwargs", "message"), STORE_ERRORS)
def test_store_needs_io_names(client: Client, kwargs: dict[str, object], message: str) -> None:
    """redisai-py checks it first (ValueError); RedisAI's own message where its syntax is used."""
    args: dict[str, object] = {"inputs": ["a", "b"], "outputs": ["mul"], **kwargs}
    with pytest.raises(ValueError, match=r"^Require keyword arguments inputs and outputs for TF"):
        client.modelstore("m", "TF", "CPU", tf_mul_graph(), **args)  # type: ignore[arg-type]
    names = [w for k in ("inputs", "outputs") if args[k] for w in (k.upper(), "1", "a")]
    with pytest.raises(AIError) as info:
        parse(["AI.MODELSTORE", "m", "TF", "CPU", *names, "BLOB", "x"])
    assert str(info.value) == message


def test_io_names_refused_for_other_backends(client: Client) -> None:
    with pytest.raises(ValueError) as info:
        client.modelstore("m", "ONNX", "CPU", b"x", inputs=["a"], outputs=["b"])
    assert str(info.value) == "Inputs and outputs keywords should not be specified for this backend"


LOAD_ERRORS = [
    ({"inputs": ["a", "b", "bad_input"]}, 'Input node named "bad_input" not found in TF graph.'),
    ({"outputs": ["mult"]}, 'Output node named "mult" not found in TF graph'),
    ({"blob": b"\x08\x96\x01garbage\xff\xff\xff"}, "Invalid GraphDef"),
]


@pytest.mark.parametrize(("kwargs", "message"), LOAD_ERRORS)
def test_load_errors_then_keeps_serving(
    client: Client, worker: Worker, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"inputs": ["a", "b"], "outputs": ["mul"], **kwargs}
    blob = args.pop("blob", tf_mul_graph())
    with pytest.raises(AIError) as refused:  # RedisAI refused a model it could not load
        client.modelstore("bad", "TF", "CPU", blob, **args)  # type: ignore[arg-type]
    assert str(refused.value) == message
    store_unchecked(client, "bad", "TF", blob, **args)  # type: ignore[arg-type]
    set_ab(client)
    with pytest.raises(JobFailed) as info:
        client.modelexecute("bad", ["a"] * len(args["inputs"]), ["c"])  # type: ignore[arg-type]
    assert str(info.value) == message
    client.modelstore("good", "TF", "CPU", tf_mul_graph(), inputs=["a", "b"], outputs=["mul"])
    assert client.modelexecute("good", ["a", "b"], ["c"]) == "OK"


def test_saved_model_zip_without_names(client: Client, worker: Worker) -> None:
    """The serving signature names inputs and outputs (sorted: x, y -> prod, sum)."""
    client.modelstore("sm", "TF", "CPU", tf_saved_model_zip())
    assert client.modelget("sm", meta_only=True)["inputs"] == []
    client.tensorset("x", np.array([1, 2], dtype=np.float32))
    client.tensorset("y", np.array([10, 20], dtype=np.float32))
    client.modelexecute("sm", ["x", "y"], ["prod", "sum"])
    assert client.tensorget("prod").tolist() == [10, 40]
    assert client.tensorget("sum").tolist() == [31, 62]
    with pytest.raises(JobFailed, match="INPUTS here does not match model definition"):
        client.modelexecute("sm", ["x"], ["prod", "sum"])


def test_saved_model_zip_with_names_and_top_folder(client: Client, worker: Worker) -> None:
    blob = tf_saved_model_zip("exported/1")
    client.modelstore("sm", "TF", "CPU", blob, inputs=["y", "x"], outputs=["sum"])
    client.tensorset("x", np.array([1, 2], dtype=np.float32))
    client.tensorset("y", np.array([10, 20], dtype=np.float32))
    client.modelexecute("sm", ["y", "x"], ["s"])  # first key feeds signature input y
    assert client.tensorget("s").tolist() == [31, 62]
    with pytest.raises(AIError, match=r'^Input "z" not found in the SavedModel signature'):
        client.modelstore("bad", "TF", "CPU", blob, inputs=["z"], outputs=["sum"])
    store_unchecked(client, "bad", "TF", blob, inputs=["z"], outputs=["sum"])
    with pytest.raises(JobFailed, match=r'^Input "z" not found in the SavedModel signature'):
        client.modelexecute("bad", ["x"], ["s"])


def test_zip_without_saved_model(client: Client, worker: Worker) -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.pt", b"not a saved model")
    with pytest.raises(AIError, match=r"^Invalid GraphDef$"):  # RedisAI's, for what is no GraphDef
        client.modelstore("m", "TF", "CPU", buffer.getvalue())
    store_unchecked(client, "m", "TF", buffer.getvalue())
    client.tensorset("x", [1], dtype="FLOAT")
    with pytest.raises(JobFailed, match=r"^Invalid GraphDef$"):
        client.modelexecute("m", ["x"], ["y"])


def test_gpu_refused_when_absent(client: Client, settings: Settings) -> None:
    """A worker serving the GPU queue on a host without one replies with an error (no CPU
    fallback)."""
    if gpu_count("tf"):
        pytest.skip("a GPU is present: the refusal path needs a host without one")
    w = Worker(settings.replace(devices=("GPU",))).start()
    try:
        client.modelstore("m", "TF", "GPU", tf_mul_graph(), inputs=["a", "b"], outputs=["mul"])
        set_ab(client)
        with pytest.raises(JobFailed) as info:
            client.modelexecute("m", ["a", "b"], ["c"])
    finally:
        w.stop(timeout=10)
    message = "device GPU is not available on this worker host (TensorFlow found 0 GPUs)"
    assert str(info.value) == message


def test_gpu_run(client: Client, settings: Settings) -> None:
    if not gpu_count("tf"):
        pytest.skip("no GPU present: TensorFlow sees no GPU on this host")
    w = Worker(settings.replace(devices=("GPU:0",))).start()
    try:
        client.modelstore("m", "TF", "GPU:0", tf_mul_graph(), inputs=["a", "b"], outputs=["mul"])
        set_ab(client)
        client.modelexecute("m", ["a", "b"], ["c"])
        assert client.tensorget("c").tolist() == [4, 9]
    finally:
        w.stop(timeout=10)


def test_session_settings_and_timeout() -> None:
    from aiworker.backends.tf import TFBackend

    backend = TFBackend(BackendOptions(inter_op_parallelism=2, intra_op_parallelism=1))
    spec = ModelSpec("m", parse_device("CPU"), ("a", "b"), ("mul",))
    model = backend.load(tf_mul_graph(), spec)
    config = model.session._config  # type: ignore[attr-defined]
    assert (config.inter_op_parallelism_threads, config.intra_op_parallelism_threads) == (2, 1)
    slow = TFBackend(BackendOptions(model_execution_timeout_ms=1)).load(
        tf_slow_graph(), ModelSpec("s", parse_device("CPU"), ("x",), ("out",))
    )
    with pytest.raises(AIError, match=r"MODEL_EXECUTION_TIMEOUT \(1 ms\)"):
        slow.run([np.zeros(1, np.float32)])
    model.close()
    slow.close()
