"""RedisAI's own flow tests for models, their checks replayed through the gateway: the model
parts of ``tests_pytorch.py``, ``tests_onnx.py``, ``tests_tensorflow.py`` and ``tests_tflite.py``,
and what ``test_gateway_redisai_suite.py`` does not replay of ``tests_commands.py`` (MODELSTORE's
devices, MODELGET's default reply, AI.INFO from parallel clients, AI.CONFIG). Each expected reply
and message is the one RedisAI's test asserted; where aiworker differs on purpose, the case says
so (README, "Moving from RedisAI").

RedisAI's tests load binaries from their test_data folder (pt-minimal.pt, pt-minimal-bb.pt,
mnist.onnx, mnist_batched.onnx, linear_iris.onnx, logreg_iris.onnx, identity_string.onnx,
batchdim_mismatch.onnx, model_with_infinite_loop.onnx, graph.pb, graph_v2.pb, the mobilenet
graph, mnist_model_quant.tflite, one.raw): the models here are built locally with the same input
and output names, dtypes and shapes, and answer what RedisAI's tests expected of the originals
(the digit 1 for one.raw, the giant panda for the panda picture). Loops RedisAI ran up to 100
times, or in 10 to 30 processes, run a few times in a few threads: the replies are the same each
time, and the machine is shared.

Not replayed: checks of module internals (RDB save and load, INFO MODULES' backend versions,
load-time configurations, onnxruntime's allocator counters and run sessions, the low-level API
module) and of GPU devices; AI.INFO without a key is replayed in
``test_gateway_redisai_suite.py``."""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import test_gateway
import test_gateway_redisai_suite
from builders import tf_mul_graph
from conftest import at_once, torch_blob, wait_until
from test_gateway import connect, error_of, raw_socket
from test_gateway_redisai_dag import (
    IMAGENET_ENTRY_POINTS,
    IMAGENET_SCRIPT,
    creditcard_data,
    financial_graph,
    image,
    imagenet_graph,
)
from test_gateway_redisai_suite import WRONGTYPE

from aiworker import Client, Settings, Worker
from aiworker.client.raw import list2dict
from aiworker.gateway import Gateway
from aiworker.gateway.resp import pack

gateway = test_gateway_redisai_suite.gateway  # the fixtures: one gateway, a connection to it
con = test_gateway.con

INPUTS_COUNT = "Number of keys given as INPUTS here does not match model definition"
OUTPUTS_COUNT = "Number of keys given as OUTPUTS here does not match model definition"
GIANT_PANDA = 388  # the label id of "giant_panda" in RedisAI's imagenet labels (argmax - 1)


# the models ------------------------------------------------------------------------------------


def one_raw() -> bytes:
    """one.raw's form: a 1 x 1 x 28 x 28 float picture of the digit 1 (a vertical stroke)."""
    digit = np.zeros((28, 28), np.float32)
    digit[4:24, 13:15] = 1.0
    return digit.tobytes()


def digit_weights() -> tuple[np.ndarray, np.ndarray]:
    """784 x 10 weights and 10 biases that score each digit by a template: the template of 1 is
    one.raw's stroke, the others random noise, so a vertical stroke reads as 1."""
    rng = np.random.default_rng(7)
    weights = rng.normal(0, 0.01, (784, 10)).astype(np.float32)
    weights[:, 1] += np.frombuffer(one_raw(), np.float32)
    return weights, np.zeros(10, np.float32)


def _onnx_model(graph: Any) -> bytes:
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@functools.cache
def onnx_mnist(batched: bool = False) -> bytes:
    """mnist.onnx's interface: ``Input3`` (1 x 1 x 28 x 28, float) -> ``Plus214_Output_0``
    (1 x 10); ``batched``: mnist_batched.onnx, its first dimension free."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    batch: int | str = "N" if batched else 1
    weights, biases = digit_weights()
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["Input3", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["scores"]),
            helper.make_node("Add", ["scores", "biases"], ["Plus214_Output_0"]),
        ],
        "mnist",
        [helper.make_tensor_value_info("Input3", TensorProto.FLOAT, [batch, 1, 28, 28])],
        [helper.make_tensor_value_info("Plus214_Output_0", TensorProto.FLOAT, [batch, 10])],
        initializer=[
            numpy_helper.from_array(np.array([-1 if batched else 1, 784], np.int64), "shape"),
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(biases, "biases"),
        ],
    )
    return _onnx_model(graph)


@functools.cache
def onnx_string_identity() -> bytes:
    """identity_string.onnx, as RedisAI's onnx_string_identity.py builds it."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input:0"], ["output:0"], name="StringIdentity")],
        "optional_input_graph",
        [helper.make_tensor_value_info("input:0", TensorProto.STRING, [2, 2])],
        [helper.make_tensor_value_info("output:0", TensorProto.STRING, [2, 2])],
    )
    return _onnx_model(graph)


@functools.cache
def onnx_batchdim_mismatch() -> bytes:
    """batchdim_mismatch.onnx's interface: inputs ``0`` and ``1`` of 2 floats, two outputs."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["0", "1"], ["2"]), helper.make_node("Mul", ["0", "1"], ["3"])],
        "batchdim_mismatch",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "01"],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "23"],
    )
    return _onnx_model(graph)


@functools.cache
def onnx_infinite_loop() -> bytes:
    """model_with_infinite_loop.onnx's interface: ``outer_scope_input`` (float),
    ``iterations`` (int64), ``loop_cond`` (bool), ``loop_input`` (float) ->
    ``outer_scope_output`` (an Identity) and ``loop_output`` (a Loop of ``iterations`` steps
    that does nothing)."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["outer_scope_input"], ["outer_scope_output"]),
            helper.make_node("Squeeze", ["iterations"], ["m"]),
            helper.make_node("Squeeze", ["loop_cond"], ["cond"]),
            helper.make_node("Loop", ["m", "cond", "loop_input"], ["loop_output"], body=body),
        ],
        "infinite_loop",
        [
            helper.make_tensor_value_info("outer_scope_input", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("iterations", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("loop_cond", TensorProto.BOOL, [1]),
            helper.make_tensor_value_info("loop_input", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("outer_scope_output", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("loop_output", TensorProto.FLOAT, [1]),
        ],
    )
    return _onnx_model(graph)


IRIS_FEATURES = (5.1, 3.5, 1.4, 0.2)
LINEAR_IRIS_OUT = -0.090524077415466309  # what linear_iris.onnx answers for IRIS_FEATURES


@functools.cache
def iris_models() -> tuple[bytes, bytes]:
    """linear_iris.onnx and logreg_iris.onnx: scikit-learn's LinearRegression and
    LogisticRegression fitted on iris (``float_input`` -> ``variable``; ``float_input`` ->
    ``label``, ``probabilities``), converted by skl2onnx. The linear model's intercept is then
    nudged until it answers RedisAI's expected value for the test's flower exactly."""
    datasets = pytest.importorskip("sklearn.datasets")
    linear_model = pytest.importorskip("sklearn.linear_model")
    skl2onnx = pytest.importorskip("skl2onnx")
    ort = pytest.importorskip("onnxruntime")
    from skl2onnx.common.data_types import FloatTensorType

    x, y = datasets.load_iris(return_X_y=True)
    inputs = [("float_input", FloatTensorType([None, 4]))]
    linear = skl2onnx.convert_sklearn(linear_model.LinearRegression().fit(x, y),
                                      initial_types=inputs, target_opset=15)  # fmt: skip
    classifier = linear_model.LogisticRegression(max_iter=500).fit(x, y)
    logreg = skl2onnx.convert_sklearn(classifier, initial_types=inputs, target_opset=15,
                                      options={id(classifier): {"zipmap": False}})  # fmt: skip
    regressor = next(node for node in linear.graph.node if node.op_type == "LinearRegressor")
    intercepts = next(a for a in regressor.attribute if a.name == "intercepts")
    flower = np.array([IRIS_FEATURES], np.float32)
    target = np.float32(LINEAR_IRIS_OUT)
    for _ in range(50):
        session = ort.InferenceSession(
            linear.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        got = np.float32(session.run(None, {"float_input": flower})[0].ravel()[0])
        if got == target:
            break
        intercept = np.float32(intercepts.floats[0])
        moved = np.float32(intercept + (target - got))
        if moved == intercept:  # the last ulps: one step at a time
            moved = np.nextafter(intercept, np.float32(np.inf if target > got else -np.inf))
        intercepts.floats[0] = float(moved)
    else:
        pytest.fail("could not make the linear iris model answer RedisAI's value")
    return bytes(linear.SerializeToString()), bytes(logreg.SerializeToString())


@functools.cache
def torch_bad_batch() -> bytes:
    """pt-minimal-bb.pt: ``forward(a, b)`` returns a tuple of two tensors, the second without
    the batch dimension of the inputs (a batch of runs cannot be split back)."""
    torch = pytest.importorskip("torch")

    class BadBatch(torch.nn.Module):  # type: ignore[misc,name-defined]
        # unannotated arguments are Tensors in TorchScript
        def forward(self, a, b):  # type: ignore[no-untyped-def]
            return a + b, (a + b)[0]

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; RedisAI still runs it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(BadBatch()), buffer)
    return buffer.getvalue()


@functools.cache
def tf2_graph() -> bytes:
    """graph_v2.pb (RedisAI's tf2-minimal.py: a Keras Sequential frozen): ``x`` (N x 28 x 28)
    flattened, a dense relu layer of 128 then a dense softmax of 10, output ``Identity``. Its
    biases are zero, so an image of zeros reads as 0.1 for each class."""
    tf = pytest.importorskip("tensorflow")
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    rng = np.random.default_rng(8)
    hidden = tf.Variable(rng.normal(0, 0.05, (784, 128)).astype(np.float32))
    output = tf.Variable(rng.normal(0, 0.05, (128, 10)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="x")])  # type: ignore[untyped-decorator]
    def fcn(x: Any) -> Any:
        flat = tf.reshape(x, [-1, 784])
        return tf.nn.softmax(tf.matmul(tf.nn.relu(tf.matmul(flat, hidden)), output))

    frozen = convert_variables_to_constants_v2(fcn.get_concrete_function())
    return bytes(frozen.graph.as_graph_def().SerializeToString())


MOBILENET_INPUT, MOBILENET_OUTPUT = "input", "MobilenetV2/Predictions/Reshape_1"


@functools.cache
def mobilenet_graph() -> bytes:
    """The mobilenet v2 graph's interface: ``input`` (N x 224 x 224 x 3, float) ->
    ``MobilenetV2/Predictions/Reshape_1`` (N x 1001 probabilities), answering the giant panda
    for the picture of ``panda()``."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(9)
    weights = rng.normal(0, 0.01, (3, 1001)).astype(np.float32)
    biases = rng.normal(0, 0.01, 1001).astype(np.float32)
    biases[GIANT_PANDA + 1] += 5
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3], name=MOBILENET_INPUT)
        logits = tf.matmul(tf.reduce_mean(images, axis=[1, 2]), weights) + biases
        tf.nn.softmax(logits, name=MOBILENET_OUTPUT)
    return bytes(graph.as_graph_def().SerializeToString())


def panda() -> np.ndarray:
    """The panda picture's form: 224 x 224 x 3 floats in [0, 1]."""
    return np.random.default_rng(10).random((224, 224, 3), dtype=np.float32)


@functools.cache
def tflite_mnist() -> bytes:
    """mnist_model_quant.tflite's interface: a 1 x 1 x 28 x 28 float picture -> the digit read
    (int64) and the ten scores."""
    tf = pytest.importorskip("tensorflow")
    weights, biases = digit_weights()

    @tf.function(input_signature=[tf.TensorSpec([1, 1, 28, 28], tf.float32, name="x")])  # type: ignore[untyped-decorator]
    def mnist(x: Any) -> Any:
        scores = tf.matmul(tf.reshape(x, [1, 784]), weights) + biases
        return tf.argmax(scores, axis=1), scores

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [mnist.get_concrete_function()], mnist
    )
    return bytes(converter.convert())


def argmax(values: list[bytes]) -> int:
    """RedisAI's tests took the index of the largest value TENSORGET VALUES listed."""
    return max(range(len(values)), key=lambda i: float(values[i]))


def info(con: redis.Redis, key: str) -> dict[str, Any]:
    return list2dict(con.execute_command("AI.INFO", key))


def send_and_disconnect(gateway: Gateway, *command: Any) -> None:
    """RedisAI's send_and_disconnect: the command sent, the connection closed before the
    reply."""
    sock = raw_socket(gateway)
    sock.sendall(b"".join(pack([str(arg).encode() if not isinstance(arg, bytes) else arg
                                for arg in command])))  # fmt: skip
    sock.close()


def set_ab(con: redis.Redis, *names: str) -> None:
    for name in names:
        assert con.execute_command("AI.TENSORSET", name, "FLOAT", 2, 2, "VALUES", 2, 3, 2, 3) == (
            b"OK"
        )


def check_stats(con: redis.Redis, key: str, backend: str, runs: int, samples_per_run: int,
                run: tuple[Any, ...]) -> None:  # fmt: skip
    """RedisAI's *_modelinfo loop: after each run, AI.INFO's counters and a growing duration;
    then RESETSTAT zeroes them."""
    previous_duration = 0
    for call in range(1, runs + 1):
        assert con.execute_command("AI.MODELEXECUTE", key, *run) == b"OK"
        stats = info(con, key)
        assert (stats["key"], stats["type"], stats["backend"], stats["device"]) == (
            key, "MODEL", backend, "CPU"
        )  # fmt: skip
        assert stats["duration"] > previous_duration
        assert (stats["samples"], stats["calls"], stats["errors"]) == (
            samples_per_run * call, call, 0
        )  # fmt: skip
        previous_duration = stats["duration"]
    assert con.execute_command("AI.INFO", key, "RESETSTAT") == b"OK"
    stats = info(con, key)
    assert [stats[name] for name in ("duration", "samples", "calls", "errors")] == [0, 0, 0, 0]


# tests_pytorch.py ------------------------------------------------------------------------------


def test_pytorch_chunked_modelstore(con: redis.Redis, worker: Worker) -> None:
    """test_pytorch_chunked_modelstore: a blob sent in chunks is the blob sent whole; after
    AI.CONFIG MODEL_CHUNK_SIZE, MODELGET answers it in chunks of that size."""
    model = torch_blob()
    chunk_size = len(model) // 3
    chunks = [model[i : i + chunk_size] for i in range(0, len(model), chunk_size)]
    assert con.execute_command("AI.MODELSTORE", "m1", "TORCH", "CPU", "BLOB", model) == b"OK"
    assert con.execute_command("AI.MODELSTORE", "m2", "TORCH", "CPU", "BLOB", *chunks) == b"OK"
    assert con.execute_command("AI.MODELGET", "m1", "BLOB") == (
        con.execute_command("AI.MODELGET", "m2", "BLOB")
    )
    assert con.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", chunk_size) == b"OK"
    # RedisAI's RAI_ReplyWithChunks sent len // size + 1 chunks, so an empty last one when the
    # size divides the blob (its test's blob was not so divided)
    expected = chunks + [b""] * (len(model) % chunk_size == 0)
    assert con.execute_command("AI.MODELGET", "m2", "BLOB") == expected
    assert con.execute_command("AI.MODELGET", "m2", "META", "BLOB")[-1] == expected


def test_pytorch_modelrun(con: redis.Redis, worker: Worker) -> None:
    """test_pytorch_modelrun: MODELGET's META (forward's two arguments, one output), a tag, a
    blob TorchScript cannot load, the sum."""
    set_ab(con, "a{1}", "b{1}")
    model = torch_blob()
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TORCH", "CPU", "BLOB", model) == b"OK"
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16
    assert (ret[1], ret[3], ret[5], ret[7], ret[9], ret[15]) == (b"TORCH", b"CPU", b"", 0, 0, 0)
    assert (len(ret[11]), len(ret[13])) == (2, 1)
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TORCH", "CPU", "TAG", "my:tag:v3",
                               "BLOB", model) == b"OK"  # fmt: skip
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16 and (ret[1], ret[3], ret[5]) == (b"TORCH", b"CPU", b"my:tag:v3")
    error_of(con, "AI.MODELSTORE", "m{1}", "TORCH", "CPU", "BLOB", tf_mul_graph())
    ret = con.execute_command("AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "a{1}", "b{1}",
                              "OUTPUTS", 1, "c{1}")  # fmt: skip
    assert ret == b"OK"
    assert con.execute_command("AI.TENSORGET", "c{1}", "VALUES") == [b"4", b"6", b"4", b"6"]


def two_clients_at_once(gateway: Gateway, *commands: tuple[Any, ...]) -> list[Any]:
    """Each command on a connection of its own, all sent at once (RedisAI's tests ran one in a
    thread and one on the test's connection); the replies, or the errors, in order."""
    connections = [connect(gateway) for _ in commands]

    def call(connection: redis.Redis, command: tuple[Any, ...]) -> Any:
        try:
            return connection.execute_command(*command)
        except redis.ResponseError as exc:
            return exc

    try:
        return at_once([functools.partial(call, c, command)
                        for c, command in zip(connections, commands, strict=True)])  # fmt: skip
    finally:
        for connection in connections:
            connection.close()


def test_pytorch_modelrun_autobatch(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_pytorch_modelrun_autobatch: two runs of 2 rows batched (BATCHSIZE 4 MINBATCHSIZE 2)."""
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TORCH", "CPU", "BATCHSIZE", 4,
                               "MINBATCHSIZE", 2, "BLOB", torch_blob()) == b"OK"  # fmt: skip
    set_ab(con, "a{1}", "b{1}", "d{1}", "e{1}")
    replies = two_clients_at_once(
        gateway,
        ("AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "d{1}", "e{1}", "OUTPUTS", 1, "f{1}"),
        ("AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "a{1}", "b{1}", "OUTPUTS", 1, "c{1}"),
    )
    assert replies == [b"OK", b"OK"]
    for key in ("c{1}", "f{1}"):
        assert con.execute_command("AI.TENSORGET", key, "VALUES") == [b"4", b"6", b"4", b"6"]


def test_pytorch_modelrun_autobatch_badbatch(
    con: redis.Redis, gateway: Gateway, worker: Worker
) -> None:
    """test_pytorch_modelrun_autobatch_badbatch: a batch whose second output lost the batch
    dimension fails both runs."""
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TORCH", "CPU", "BATCHSIZE", 4,
                               "MINBATCHSIZE", 3, "BLOB", torch_bad_batch()) == b"OK"  # fmt: skip
    set_ab(con, "a{1}", "b{1}", "d{1}", "e{1}")
    replies = two_clients_at_once(
        gateway,
        ("AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "d{1}", "e{1}", "OUTPUTS", 2, "f1{1}", "f2{1}"),
        ("AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "a{1}", "b{1}", "OUTPUTS", 2, "c1{1}", "c2{1}"),
    )
    assert [str(reply) for reply in replies] == [
        "Model did not generate the expected batch size"
    ] * 2


def test_pytorch_modelinfo(con: redis.Redis, worker: Worker) -> None:
    """test_pytorch_modelinfo: the tag, 2 samples a run, RESETSTAT."""
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TORCH", "CPU", "TAG", "asdf",
                               "BLOB", torch_blob()) == b"OK"  # fmt: skip
    set_ab(con, "a{1}", "b{1}")
    assert info(con, "m{1}")["tag"] == "asdf"
    check_stats(con, "m{1}", "TORCH", 5, 2, ("INPUTS", 2, "a{1}", "b{1}", "OUTPUTS", 1, "c{1}"))


def test_pytorch_modelrun_disconnect(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_pytorch_modelrun_disconnect: a client that leaves before the reply harms nothing
    (the run goes on without it)."""
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TORCH", "CPU",
                               "BLOB", torch_blob()) == b"OK"  # fmt: skip
    set_ab(con, "a{1}", "b{1}")
    send_and_disconnect(gateway, "AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "a{1}", "b{1}",
                        "OUTPUTS", 1, "c{1}")  # fmt: skip
    wait_until(lambda: con.execute_command("EXISTS", "c{1}") == 1, timeout=20)
    assert con.execute_command("AI.TENSORGET", "c{1}", "VALUES") == [b"4", b"6", b"4", b"6"]


def test_modelget_for_tuple_output(con: redis.Redis, worker: Worker) -> None:
    """test_modelget_for_tuple_output: a forward returning a tuple lists two outputs."""
    ret = con.execute_command("AI.MODELSTORE", "m{1}", "TORCH", "CPU", "BLOB", torch_bad_batch())
    assert ret == b"OK"
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert (ret[1], ret[5], ret[7], ret[9], ret[15]) == (b"TORCH", b"", 0, 0, 0)
    assert (len(ret[11]), len(ret[13])) == (2, 2)


# test_pytorch_model_rdb_save_load, test_parallelism and test_torch_info are not replayed: they
# check RedisAI's RDB encoding and INFO MODULES' sections (README, "Moving from RedisAI": no ai
# module in INFO MODULES, no RedisAI types in an RDB).


# tests_onnx.py ---------------------------------------------------------------------------------


def test_onnx_modelrun_mnist(con: redis.Redis, worker: Worker) -> None:
    """test_onnx_modelrun_mnist: MODELGET's META (one input, one output), a tag, a TF graph
    onnxruntime refuses, a count refused before the inputs are read, the digit."""
    model = onnx_mnist()
    assert con.execute_command("AI.MODELSTORE", "m{1}", "ONNX", "CPU", "BLOB", model) == b"OK"
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16 and ret[5] == b"" and (len(ret[11]), len(ret[13])) == (1, 1)
    assert con.execute_command("AI.MODELSTORE", "m{1}", "ONNX", "CPU", "TAG", "version:2",
                               "BLOB", model) == b"OK"  # fmt: skip
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16 and (ret[1], ret[3], ret[5]) == (b"ONNX", b"CPU", b"version:2")
    assert (len(ret[11]), len(ret[13])) == (1, 1)
    assert error_of(con, "AI.MODELSTORE", "m{1}", "ONNX", "CPU", "BLOB", tf_mul_graph()) == (
        "No graph was found in the protobuf."
    )
    con.execute_command("AI.TENSORSET", "a{1}", "FLOAT", 1, 1, 28, 28, "BLOB", one_raw())
    assert error_of(con, "AI.MODELEXECUTE", "m{1}", "INPUTS", 3, "a{1}", "b{1}", "c{1}",
                    "OUTPUTS", "c{1}") == INPUTS_COUNT  # fmt: skip
    ret = con.execute_command("AI.MODELEXECUTE", "m{1}", "INPUTS", 1, "a{1}", "OUTPUTS", 1, "b{1}")
    assert ret == b"OK"
    assert argmax(con.execute_command("AI.TENSORGET", "b{1}", "VALUES")) == 1


def test_onnx_string_tensors(con: redis.Redis, worker: Worker) -> None:
    """test_onnx_string_tensors: a 2 x 2 STRING tensor through an Identity."""
    ret = con.execute_command(
        "AI.MODELSTORE", "m{1}", "ONNX", "CPU", "BLOB", onnx_string_identity()
    )
    assert ret == b"OK"
    blob = b"input11\0input12\0input21\0input22\0"
    con.execute_command("AI.TENSORSET", "in_tensor{1}", "STRING", 2, 2, "BLOB", blob)
    ret = con.execute_command("AI.MODELEXECUTE", "m{1}", "INPUTS", 1, "in_tensor{1}",
                              "OUTPUTS", 1, "out_tensor{1}")  # fmt: skip
    assert ret == b"OK"
    assert con.execute_command("AI.TENSORGET", "out_tensor{1}", "META", "VALUES") == [
        b"dtype", b"STRING", b"shape", [2, 2],
        b"values", [b"input11", b"input12", b"input21", b"input22"],
    ]  # fmt: skip


def test_onnx_string_tensors_batching(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_onnx_string_tensors_batching: two 1 x 2 STRING tensors batched into the model's
    2 x 2. RedisAI's test read its inputs back; the outputs are read here too."""
    ret = con.execute_command("AI.MODELSTORE", "m{1}", "ONNX", "CPU", "BATCHSIZE", 2,
                              "MINBATCHSIZE", 2, "BLOB", onnx_string_identity())  # fmt: skip
    assert ret == b"OK"
    con.execute_command("AI.TENSORSET", "first_batch{1}", "STRING", 1, 2,
                        "VALUES", "this is\0", "the first batch\0")  # fmt: skip
    con.execute_command("AI.TENSORSET", "second_batch{1}", "STRING", 1, 2,
                        "VALUES", "that is\0", "the second batch\0")  # fmt: skip
    replies = two_clients_at_once(
        gateway,
        ("AI.MODELEXECUTE", "m{1}", "INPUTS", 1, "first_batch{1}", "OUTPUTS", 1, "first_output{1}"),
        ("AI.MODELEXECUTE", "m{1}", "INPUTS", 1, "second_batch{1}",
         "OUTPUTS", 1, "second_output{1}"),
    )  # fmt: skip
    assert replies == [b"OK", b"OK"]
    first, second = [b"this is", b"the first batch"], [b"that is", b"the second batch"]
    assert con.execute_command("AI.TENSORGET", "first_batch{1}", "VALUES") == first
    assert con.execute_command("AI.TENSORGET", "second_batch{1}", "VALUES") == second
    assert con.execute_command("AI.TENSORGET", "first_output{1}", "VALUES") == first
    assert con.execute_command("AI.TENSORGET", "second_output{1}", "VALUES") == second


def test_onnx_modelrun_batchdim_mismatch(con: redis.Redis, worker: Worker) -> None:
    """test_onnx_modelrun_batchdim_mismatch: onnxruntime's own message, its line breaks turned
    to spaces as Redis turned them."""
    ret = con.execute_command("AI.MODELSTORE", "m{1}", "ONNX", "CPU", "BLOB",
                              onnx_batchdim_mismatch())  # fmt: skip
    assert ret == b"OK"
    con.execute_command("AI.TENSORSET", "a{1}", "FLOAT", 3, "VALUES", 1, 1, 1)
    con.execute_command("AI.TENSORSET", "b{1}", "FLOAT", 2, "VALUES", 1, 1)
    message = error_of(con, "AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "a{1}", "b{1}",
                       "OUTPUTS", 2, "c{1}", "d{1}")  # fmt: skip
    # onnxruntime's wording after "the inputs" changed in the releases since RedisAI's (now
    # "the inputs/outputs or the model.")
    assert message.startswith(
        "Got invalid dimensions for input: 0 for the following indices  index: 0 Got: 3"
        " Expected: 2  Please fix either the inputs"
    )


def test_onnx_modelrun_mnist_autobatch(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_onnx_modelrun_mnist_autobatch: MODELGET's batching values, two runs batched."""
    ret = con.execute_command("AI.MODELSTORE", "m{1}", "ONNX", "CPU", "BATCHSIZE", 2,
                              "MINBATCHSIZE", 2, "BLOB", onnx_mnist(batched=True))  # fmt: skip
    assert ret == b"OK"
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16
    assert (ret[1], ret[3], ret[5], ret[7], ret[9], ret[15]) == (b"ONNX", b"CPU", b"", 2, 2, 0)
    assert (len(ret[11]), len(ret[13])) == (1, 1)
    for key in ("a{1}", "c{1}"):
        con.execute_command("AI.TENSORSET", key, "FLOAT", 1, 1, 28, 28, "BLOB", one_raw())
    replies = two_clients_at_once(
        gateway,
        ("AI.MODELEXECUTE", "m{1}", "INPUTS", 1, "c{1}", "OUTPUTS", 1, "d{1}"),
        ("AI.MODELEXECUTE", "m{1}", "INPUTS", 1, "a{1}", "OUTPUTS", 1, "b{1}"),
    )
    assert replies == [b"OK", b"OK"]
    for key in ("b{1}", "d{1}"):
        assert argmax(con.execute_command("AI.TENSORGET", key, "VALUES")) == 1


def test_onnx_modelrun_iris(con: redis.Redis, worker: Worker) -> None:
    """test_onnx_modelrun_iris: a regressor's value, to the last bit of its float, and a
    classifier's label (an integer) and probabilities."""
    linear, logreg = iris_models()
    assert con.execute_command("AI.MODELSTORE", "linear{1}", "ONNX", "CPU", "BLOB", linear) == (
        b"OK"
    )
    assert con.execute_command("AI.MODELSTORE", "logreg{1}", "ONNX", "CPU", "BLOB", logreg) == (
        b"OK"
    )
    con.execute_command("AI.TENSORSET", "features{1}", "FLOAT", 1, 4, "VALUES", *IRIS_FEATURES)
    ret = con.execute_command("AI.MODELEXECUTE", "linear{1}", "INPUTS", 1, "features{1}",
                              "OUTPUTS", 1, "linear_out{1}")  # fmt: skip
    assert ret == b"OK"
    ret = con.execute_command("AI.MODELEXECUTE", "logreg{1}", "INPUTS", 1, "features{1}",
                              "OUTPUTS", 2, "logreg_out{1}", "logreg_probs{1}")  # fmt: skip
    assert ret == b"OK"
    linear_out = con.execute_command("AI.TENSORGET", "linear_out{1}", "VALUES")
    logreg_out = con.execute_command("AI.TENSORGET", "logreg_out{1}", "VALUES")
    assert float(linear_out[0]) == LINEAR_IRIS_OUT
    assert logreg_out[0] == 0


def test_onnx_modelinfo(con: redis.Redis, worker: Worker) -> None:
    """test_onnx_modelinfo: one sample a run."""
    linear, _ = iris_models()
    assert con.execute_command("AI.MODELSTORE", "linear{1}", "ONNX", "CPU", "BLOB", linear) == (
        b"OK"
    )
    assert len(con.execute_command("AI.MODELGET", "linear{1}", "META")) == 16
    con.execute_command("AI.TENSORSET", "features{1}", "FLOAT", 1, 4, "VALUES", *IRIS_FEATURES)
    check_stats(con, "linear{1}", "ONNX", 5, 1,
                ("INPUTS", 1, "features{1}", "OUTPUTS", 1, "linear_out{1}"))  # fmt: skip


def test_onnx_modelrun_disconnect(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_onnx_modelrun_disconnect."""
    linear, _ = iris_models()
    assert con.execute_command("AI.MODELSTORE", "linear{1}", "ONNX", "CPU", "BLOB", linear) == (
        b"OK"
    )
    con.execute_command("AI.TENSORSET", "features{1}", "FLOAT", 1, 4, "VALUES", *IRIS_FEATURES)
    send_and_disconnect(gateway, "AI.MODELEXECUTE", "linear{1}", "INPUTS", 1, "features{1}",
                        "OUTPUTS", 1, "linear_out{1}")  # fmt: skip
    wait_until(lambda: con.execute_command("EXISTS", "linear_out{1}") == 1, timeout=20)
    assert float(con.execute_command("AI.TENSORGET", "linear_out{1}", "VALUES")[0]) == (
        LINEAR_IRIS_OUT
    )


# tests_onnx_info, test_parallelism and TestOnnxCustomAllocator are not replayed: they read INFO
# MODULES' sections (onnxruntime's version, load-time configurations, the allocator's counters:
# README, "Moving from RedisAI", no ai module in INFO MODULES); test_memory_limit asserts
# nothing, and test_benchmark_allocator is disabled there.


@pytest.fixture
def kill_switch(con: redis.Redis, client: Client, settings: Settings) -> Iterator[redis.Redis]:
    """TestOnnxKillSwitch's set-up: MODEL_EXECUTION_TIMEOUT 1000 and 8 threads a queue
    (RedisAI's module arguments; AI.CONFIG settings here, which ``aiworker worker`` reads when it
    starts: the worker in this process is given them), the looping model and its inputs."""
    assert con.execute_command("AI.CONFIG", "MODEL_EXECUTION_TIMEOUT", 1000) == b"OK"
    assert con.execute_command("AI.CONFIG", "THREADS_PER_QUEUE", 8) == b"OK"
    worker = Worker(settings.replace(model_execution_timeout=1000, threads_per_queue=8)).start()
    try:
        ret = con.execute_command("AI.MODELSTORE", "inf_loop_model{1}", "ONNX", "CPU",
                                  "BLOB", onnx_infinite_loop())  # fmt: skip
        assert ret == b"OK"
        con.execute_command("AI.TENSORSET", "iterations{1}", "INT64", 1,
                            "VALUES", 9223372036854775807)  # fmt: skip
        con.execute_command("AI.TENSORSET", "loop_cond{1}", "BOOL", 1, "VALUES", 1)
        con.execute_command("AI.TENSORSET", "loop_input{1}", "FLOAT", 1, "VALUES", 42)
        con.execute_command("AI.TENSORSET", "outer_scope_input{1}", "FLOAT", 1, "VALUES", 42)
        yield con
    finally:
        worker.stop(timeout=10)


INF_LOOP_RUN = (
    "AI.MODELEXECUTE", "inf_loop_model{1}", "INPUTS", 4, "outer_scope_input{1}", "iterations{1}",
    "loop_cond{1}", "loop_input{1}", "OUTPUTS", 2, "outer_scope_output{1}", "loop_output{1}",
)  # fmt: skip
TERMINATED = "Exiting due to terminate flag being set to true"


def test_onnx_kill_switch_basic(kill_switch: redis.Redis) -> None:
    """TestOnnxKillSwitch.test_basic: a run past MODEL_EXECUTION_TIMEOUT is terminated."""
    assert TERMINATED in error_of(kill_switch, *INF_LOOP_RUN)


def test_onnx_kill_switch_multiple_working_threads(
    kill_switch: redis.Redis, gateway: Gateway
) -> None:
    """TestOnnxKillSwitch.test_multiple_working_threads: clients in parallel each run mnist,
    the looping model (terminated), mnist again, on the threads the kill switch watches."""
    con = kill_switch
    ret = con.execute_command("AI.MODELSTORE", "mnist{1}", "ONNX", "CPU", "BLOB", onnx_mnist())
    assert ret == b"OK"
    con.execute_command("AI.TENSORSET", "a{1}", "FLOAT", 1, 1, 28, 28, "BLOB", one_raw())
    mnist = ("AI.MODELEXECUTE", "mnist{1}", "INPUTS", 1, "a{1}", "OUTPUTS", 1, "b{1}")

    def client_runs() -> list[Any]:
        other = connect(gateway)
        try:
            first = other.execute_command(*mnist)
            terminated = error_of(other, *INF_LOOP_RUN)
            return [first, TERMINATED in terminated, other.execute_command(*mnist)]
        finally:
            other.close()

    assert at_once([client_runs] * 4, timeout=60) == [[b"OK", True, b"OK"]] * 4


# TestOnnxKillSwitch.test_multiple_devices reads INFO MODULES' run sessions (not replayed).


# tests_tensorflow.py ---------------------------------------------------------------------------


def store_mobilenet(con: redis.Redis, key: str, *batching: Any) -> None:
    ret = con.execute_command("AI.MODELSTORE", key, "TF", "CPU", *batching,
                              "INPUTS", 1, MOBILENET_INPUT, "OUTPUTS", 1, MOBILENET_OUTPUT,
                              "BLOB", mobilenet_graph())  # fmt: skip
    assert ret == b"OK"


def set_panda(con: redis.Redis, key: str = "input{1}") -> None:
    img = panda()
    con.execute_command("AI.TENSORSET", key, "FLOAT", 1, img.shape[1], img.shape[0], img.shape[2],
                        "BLOB", img.tobytes())  # fmt: skip


def label_id(con: redis.Redis, key: str) -> int:
    """RedisAI's reading of mobilenet's output: the BLOB as float32, its argmax less one."""
    _, dtype, _, shape, _, data = con.execute_command("AI.TENSORGET", key, "META", "BLOB")
    assert dtype == b"FLOAT"
    return int(np.argmax(np.frombuffer(data, dtype=np.float32).reshape(shape))) - 1


def test_run_mobilenet(con: redis.Redis, worker: Worker) -> None:
    """test_run_mobilenet: the picture's META, then the giant panda."""
    store_mobilenet(con, "mobilenet{1}")
    assert len(con.execute_command("AI.MODELGET", "mobilenet{1}", "META")) == 16
    set_panda(con)
    assert con.execute_command("AI.TENSORGET", "input{1}", "META") == [
        b"dtype", b"FLOAT", b"shape", [1, 224, 224, 3]
    ]  # fmt: skip
    ret = con.execute_command("AI.MODELEXECUTE", "mobilenet{1}", "INPUTS", 1, "input{1}",
                              "OUTPUTS", 1, "output{1}")  # fmt: skip
    assert ret == b"OK"
    assert label_id(con, "output{1}") == GIANT_PANDA


def test_run_mobilenet_multiproc(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_run_mobilenet_multiproc: clients running the model at once (30 processes there)."""
    store_mobilenet(con, "mobilenet{1}")
    set_panda(con)
    run = ("AI.MODELEXECUTE", "mobilenet{1}", "INPUTS", 1, "input{1}", "OUTPUTS", 1, "output{1}")
    assert two_clients_at_once(gateway, *[run] * 4) == [b"OK"] * 4
    assert label_id(con, "output{1}") == GIANT_PANDA


def test_del_tf_model(con: redis.Redis, worker: Worker) -> None:
    """test_del_tf_model: MODELDEL, then its errors."""
    ret = con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", "INPUTS", 2, "a", "b",
                              "OUTPUTS", 1, "mul", "BLOB", tf_mul_graph())  # fmt: skip
    assert ret == b"OK"
    assert con.execute_command("AI.MODELDEL", "m{1}") == b"OK"
    assert not con.execute_command("EXISTS", "m{1}")
    assert error_of(con, "AI.MODELDEL", "m{1}") == "model key is empty"
    con.execute_command("SET", "NOT_MODEL{1}", "BAR")
    assert error_of(con, "AI.MODELDEL", "NOT_MODEL{1}") == WRONGTYPE


def test_run_tf_model(con: redis.Redis, worker: Worker) -> None:
    """test_run_tf_model: MODELGET's META (the names stored), a tag, the product, MODELDEL."""
    io = ("INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul", "BLOB", tf_mul_graph())
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", *io) == b"OK"
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16 and ret[5] == b"" and (ret[11], ret[13]) == ([b"a", b"b"], [b"mul"])
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", "TAG", "version:1", *io) == (
        b"OK"
    )
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16 and (ret[1], ret[3], ret[5]) == (b"TF", b"CPU", b"version:1")
    assert (ret[11], ret[13]) == ([b"a", b"b"], [b"mul"])
    set_ab(con, "a{1}", "b{1}")
    ret = con.execute_command("AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "a{1}", "b{1}",
                              "OUTPUTS", 1, "c{1}")  # fmt: skip
    assert ret == b"OK"
    assert con.execute_command("AI.TENSORGET", "c{1}", "VALUES") == [b"4", b"9", b"4", b"9"]
    assert con.execute_command("EXISTS", "m{1}", "a{1}", "b{1}", "c{1}") == 4
    assert con.execute_command("AI.MODELDEL", "m{1}") == b"OK"
    assert not con.execute_command("EXISTS", "m{1}")


def test_run_tf2_model(con: redis.Redis, worker: Worker) -> None:
    """test_run_tf2_model: a frozen TF2 function; an image of zeros reads as 0.1 a class."""
    io = ("INPUTS", 1, "x", "OUTPUTS", 1, "Identity", "BLOB", tf2_graph())
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", *io) == b"OK"
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16 and ret[5] == b"" and (ret[11], ret[13]) == ([b"x"], [b"Identity"])
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", "TAG", "asdf", *io) == b"OK"
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16 and ret[5] == b"asdf" and (ret[11], ret[13]) == ([b"x"], [b"Identity"])
    # RedisAI's test sent a 1 x 1 x 28 x 28 picture (see the next test): here 1 x 28 x 28
    run_tf2_on_zeros(con, (1, 28, 28))
    assert con.execute_command("AI.MODELDEL", "m{1}") == b"OK"
    assert not con.execute_command("EXISTS", "m{1}")


def run_tf2_on_zeros(con: redis.Redis, shape: tuple[int, ...]) -> None:
    con.execute_command("AI.TENSORSET", "x{1}", "FLOAT", *shape, "VALUES", *[0] * 784)
    ret = con.execute_command("AI.MODELEXECUTE", "m{1}", "INPUTS", 1, "x{1}", "OUTPUTS", 1, "y{1}")
    assert ret == b"OK"
    values = con.execute_command("AI.TENSORGET", "y{1}", "VALUES")
    assert len(values) == 10
    assert all(float(value) == pytest.approx(0.1, abs=1e-4) for value in values)


def test_run_tf2_model_on_a_picture_of_rank_4(con: redis.Redis, worker: Worker) -> None:
    """test_run_tf2_model's run as RedisAI's test sent it: the picture as 1 x 1 x 28 x 28, fed
    to a placeholder declared N x 28 x 28 that a Reshape follows. RedisAI fed it through
    TensorFlow's C API, which let the graph take it; TensorFlow's Python session refused it
    ("Cannot feed value of shape ...")."""
    io = ("INPUTS", 1, "x", "OUTPUTS", 1, "Identity", "BLOB", tf2_graph())
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", *io) == b"OK"
    run_tf2_on_zeros(con, (1, 1, 28, 28))


def test_run_tf_model_errors(con: redis.Redis, worker: Worker) -> None:
    """test_run_tf_model_errors: TF's INPUTS and OUTPUTS, then what TensorFlow refuses."""
    graph = tf_mul_graph()
    ret = con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", "INPUTS", 2, "a", "b",
                              "OUTPUTS", 1, "mul", "BLOB", graph)  # fmt: skip
    assert ret == b"OK"
    store = ("AI.MODELSTORE", "m_1{1}", "TF", "CPU")
    io = ("INPUTS", 2, "a", "b", "OUTPUTS", 1)
    cases = [
        ("INPUTS not specified for TF", ("BLOB", graph)),
        ("Invalid argument for input_count", ("INPUTS", "bad_count", "BLOB", graph)),
        (
            "number of model inputs does not match the number of given arguments",
            ("INPUTS", 2, "a"),
        ),
        ("OUTPUTS not specified for TF", ("INPUTS", 2, "a", "b")),
        ("Invalid argument for output_count", ("INPUTS", 2, "a", "b", "OUTPUTS", "bad_count")),
        (
            "number of model outputs does not match the number of given arguments",
            ("INPUTS", 2, "a", "b", "OUTPUTS", 1),
        ),
        ("Invalid argument, expected BLOB", (*io, "mul")),
        ("Invalid GraphDef", (*io, "mul", "BLOB", torch_blob())),
        (
            'Input node named "bad_input" not found in TF graph.',
            ("INPUTS", 2, "a", "bad_input", "OUTPUTS", 1, "mul", "BLOB", graph),
        ),
        ('Output node named "mult" not found in TF graph', (*io, "mult", "BLOB", graph)),
    ]
    for message, args in cases:
        assert error_of(con, *store, *args) == message, args
    assert not con.execute_command("EXISTS", "m_1{1}")


def test_run_tf_model_autobatch(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_run_tf_model_autobatch: two runs of 2 rows, MINBATCHSIZE 3, batched."""
    ret = con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", "BATCHSIZE", 4,
                              "MINBATCHSIZE", 3, "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul",
                              "BLOB", tf_mul_graph())  # fmt: skip
    assert ret == b"OK"
    set_ab(con, "a{1}", "b{1}", "d{1}", "e{1}")
    replies = two_clients_at_once(
        gateway,
        ("AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "d{1}", "e{1}", "OUTPUTS", 1, "f{1}"),
        ("AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "a{1}", "b{1}", "OUTPUTS", 1, "c{1}"),
    )
    assert replies == [b"OK", b"OK"]
    for key in ("c{1}", "f{1}"):
        assert con.execute_command("AI.TENSORGET", key, "VALUES") == [b"4", b"9", b"4", b"9"]


def test_tensorflow_modelinfo(con: redis.Redis, worker: Worker) -> None:
    """test_tensorflow_modelinfo: AI.INFO before any run, the same after storing the model
    again, then the counters."""
    store = ("AI.MODELSTORE", "m{1}", "TF", "CPU", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul",
             "BLOB", tf_mul_graph())  # fmt: skip
    assert con.execute_command(*store) == b"OK"
    expected = {"key": "m{1}", "type": "MODEL", "backend": "TF", "device": "CPU", "tag": "",
                "duration": 0, "samples": 0, "calls": 0, "errors": 0}  # fmt: skip
    assert info(con, "m{1}") == expected
    assert con.execute_command(*store) == b"OK"
    assert info(con, "m{1}") == expected
    set_ab(con, "a{1}", "b{1}")
    check_stats(con, "m{1}", "TF", 5, 2, ("INPUTS", 2, "a{1}", "b{1}", "OUTPUTS", 1, "c{1}"))


def test_tensorflow_modelrun_disconnect(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_tensorflow_modelrun_disconnect."""
    ret = con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", "INPUTS", 2, "a", "b",
                              "OUTPUTS", 1, "mul", "BLOB", tf_mul_graph())  # fmt: skip
    assert ret == b"OK"
    set_ab(con, "a{1}", "b{1}")
    send_and_disconnect(gateway, "AI.MODELEXECUTE", "m{1}", "INPUTS", 2, "a{1}", "b{1}",
                        "OUTPUTS", 1, "c{1}")  # fmt: skip
    wait_until(lambda: con.execute_command("EXISTS", "c{1}") == 1, timeout=20)
    assert con.execute_command("AI.TENSORGET", "c{1}", "VALUES") == [b"4", b"9", b"4", b"9"]


def test_tensorflow_modelrun_with_batch_and_minbatch(
    con: redis.Redis, gateway: Gateway, worker: Worker
) -> None:
    """test_tensorflow_modelrun_with_batch_and_minbatch: three runs of one row on a model
    that runs pairs (the third waits for a partner that never comes); a second model with the
    same batching still runs its pair."""
    batching = ("BATCHSIZE", 2, "MINBATCHSIZE", 2)
    store_mobilenet(con, "model{1}", *batching)
    set_panda(con)
    waiting = []
    for _ in range(3):
        sock = raw_socket(gateway)
        sock.sendall(b"".join(pack([b"AI.MODELEXECUTE", b"model{1}", b"INPUTS", b"1",
                                    b"input{1}", b"OUTPUTS", b"1", b"output{1}"])))  # fmt: skip
        waiting.append(sock)
    store_mobilenet(con, "another_model{1}", *batching)
    replies = two_clients_at_once(
        gateway,
        ("AI.MODELEXECUTE", "another_model{1}", "INPUTS", 1, "input{1}", "OUTPUTS", 1,
         "final1{1}"),
        ("AI.MODELEXECUTE", "another_model{1}", "INPUTS", 1, "input{1}", "OUTPUTS", 1,
         "final2{1}"),
    )  # fmt: skip
    assert replies == [b"OK", b"OK"]
    assert label_id(con, "final1{1}") == GIANT_PANDA
    for sock in waiting:  # RedisAI's test terminated the processes still waiting
        sock.close()


def test_tensorflow_modelrun_with_batch_minbatch_and_timeout(
    con: redis.Redis, worker: Worker
) -> None:
    """test_tensorflow_modelrun_with_batch_minbatch_and_timeout: a lone run waits
    MINBATCHTIMEOUT, then runs alone."""
    store_mobilenet(con, "model{1}", "BATCHSIZE", 2, "MINBATCHSIZE", 2, "MINBATCHTIMEOUT", 1000)
    set_panda(con)
    ret = con.execute_command("AI.MODELEXECUTE", "model{1}", "INPUTS", 1, "input{1}",
                              "OUTPUTS", 1, "output{1}")  # fmt: skip
    assert ret == b"OK"
    assert label_id(con, "output{1}") == GIANT_PANDA


def test_tensorflow_modelrun_financial_net(
    con: redis.Redis, gateway: Gateway, worker: Worker
) -> None:
    """test_tensorflow_modelrun_financialNet and its _multiproc form: runs on each transaction
    and its reference data, from one client, then from several at once."""
    transactions, references = creditcard_data(3)
    for number in range(1, 4):
        ret = con.execute_command("AI.TENSORSET", f"transactionTensor{{1}}:{number}", "FLOAT",
                                  1, 30, "BLOB", transactions[number - 1].tobytes())  # fmt: skip
        assert ret == b"OK"
        ret = con.execute_command("AI.TENSORSET", f"referenceTensor{{1}}:{number}", "FLOAT",
                                  1, 256, "BLOB", references[number - 1].tobytes())  # fmt: skip
        assert ret == b"OK"
    ret = con.execute_command("AI.MODELSTORE", "financialNet{1}", "TF", "CPU", "INPUTS", 2,
                              "transaction", "reference", "OUTPUTS", 1, "output",
                              "BLOB", financial_graph())  # fmt: skip
    assert ret == b"OK"

    def run(number: int, repetition: int) -> tuple[Any, ...]:
        return ("AI.MODELEXECUTE", "financialNet{1}", "INPUTS", 2,
                f"transactionTensor{{1}}:{number}", f"referenceTensor{{1}}:{number}",
                "OUTPUTS", 1, f"classificationTensor{{1}}:{number}_{repetition}")  # fmt: skip

    for number in range(1, 3):
        for repetition in range(2):
            assert con.execute_command(*run(number, repetition)) == b"OK"
    assert two_clients_at_once(gateway, *[run(n, 9) for n in range(1, 4)]) == [b"OK"] * 3


def test_tensorflow_modelexecute_script_execute_resnet(con: redis.Redis, worker: Worker) -> None:
    """test_tensorflow_modelexecute_script_execute_resnet: pre-process, model, post-process,
    one command each."""
    pytest.importorskip("torch")
    img = image()
    ret = con.execute_command("AI.MODELSTORE", "imagenet_model{1}", "TF", "CPU", "INPUTS", 1,
                              "images", "OUTPUTS", 1, "output", "BLOB", imagenet_graph())  # fmt: skip
    assert ret == b"OK"
    ret = con.execute_command("AI.SCRIPTSTORE", "imagenet_script{1}", "CPU",
                              *IMAGENET_ENTRY_POINTS, "SOURCE", IMAGENET_SCRIPT)  # fmt: skip
    assert ret == b"OK"
    ret = con.execute_command("AI.TENSORSET", "image1{1}", "UINT8", img.shape[1], img.shape[0], 3,
                              "BLOB", img.tobytes())  # fmt: skip
    assert ret == b"OK"
    script = ("AI.SCRIPTEXECUTE", "imagenet_script{1}")
    keys = ("KEYS", 1, "imagenet_script{1}")
    assert con.execute_command(*script, "pre_process_3ch", *keys, "INPUTS", 1, "image1{1}",
                               "OUTPUTS", 1, "temp_key1{1}") == b"OK"  # fmt: skip
    assert con.execute_command("AI.MODELEXECUTE", "imagenet_model{1}", "INPUTS", 1,
                               "temp_key1{1}", "OUTPUTS", 1, "temp_key2{1}") == b"OK"  # fmt: skip
    assert con.execute_command(*script, "post_process", *keys, "INPUTS", 1, "temp_key2{1}",
                               "OUTPUTS", 1, "output{1}") == b"OK"  # fmt: skip
    ret = con.execute_command("AI.TENSORGET", "output{1}", "VALUES")
    assert 0 <= ret[0] < 1001


# test_tf_info reads INFO MODULES' backend versions (not replayed).


# tests_tflite.py -------------------------------------------------------------------------------


def test_run_tflite_model(con: redis.Redis, worker: Worker) -> None:
    """test_run_tflite_model: MODELGET's META, a tag, the digit read (an integer)."""
    model = tflite_mnist()
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TFLITE", "CPU", "BLOB", model) == b"OK"
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16 and ret[5] == b""
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TFLITE", "CPU", "TAG", "asdf",
                               "BLOB", model) == b"OK"  # fmt: skip
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16 and ret[5] == b"asdf"
    ret = con.execute_command("AI.TENSORSET", "a{1}", "FLOAT", 1, 1, 28, 28, "BLOB", one_raw())
    assert ret == b"OK"
    ret = con.execute_command("AI.MODELGET", "m{1}", "META")
    assert len(ret) == 16 and (ret[1], ret[3]) == (b"TFLITE", b"CPU")
    ret = con.execute_command("AI.MODELEXECUTE", "m{1}", "INPUTS", 1, "a{1}",
                              "OUTPUTS", 2, "b{1}", "c{1}")  # fmt: skip
    assert ret == b"OK"
    assert con.execute_command("AI.TENSORGET", "b{1}", "VALUES")[0] == 1


def test_run_tflite_model_errors(con: redis.Redis, worker: Worker) -> None:
    """test_run_tflite_model_errors: a blob TFLite cannot load, batching refused, counts
    compared with the model's before the inputs are read."""
    model = tflite_mnist()
    assert con.execute_command("AI.MODELSTORE", "m_2{1}", "TFLITE", "CPU", "BLOB", model) == b"OK"
    assert error_of(con, "AI.MODELSTORE", "m{1}", "TFLITE", "CPU", "TAG", "asdf",
                    "BLOB", tf_mul_graph()) == "Failed to load model from buffer"  # fmt: skip
    assert error_of(con, "AI.MODELSTORE", "m{1}", "TFLITE", "CPU", "BATCHSIZE", 2,
                    "MINBATCHSIZE", 2, "BLOB", model) == (
        "Auto-batching not supported by the TFLITE backend"
    )  # fmt: skip
    ret = con.execute_command("AI.TENSORSET", "a{1}", "FLOAT", 1, 1, 28, 28, "BLOB", one_raw())
    assert ret == b"OK"
    assert error_of(con, "AI.MODELEXECUTE", "m_2{1}", "INPUTS", 1, "EMPTY_INPUT{1}",
                    "OUTPUTS", 1, "EMPTY_OUTPUT{1}") == OUTPUTS_COUNT  # fmt: skip
    assert error_of(con, "AI.MODELEXECUTE", "m_2{1}", "INPUTS", 3, "a{1}", "b{1}", "c{1}",
                    "OUTPUTS", 1, "d{1}") == INPUTS_COUNT  # fmt: skip
    assert not con.execute_command("EXISTS", "m{1}")


def test_tflite_modelinfo(con: redis.Redis, worker: Worker) -> None:
    """test_tflite_modelinfo: one sample a run."""
    ret = con.execute_command("AI.MODELSTORE", "mnist{1}", "TFLITE", "CPU", "BLOB", tflite_mnist())
    assert ret == b"OK"
    ret = con.execute_command("AI.TENSORSET", "a{1}", "FLOAT", 1, 1, 28, 28, "BLOB", one_raw())
    assert ret == b"OK"
    check_stats(con, "mnist{1}", "TFLITE", 5, 1,
                ("INPUTS", 1, "a{1}", "OUTPUTS", 2, "b{1}", "c{1}"))  # fmt: skip


def test_tflite_modelrun_disconnect(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_tflite_modelrun_disconnect."""
    ret = con.execute_command("AI.MODELSTORE", "mnist{1}", "TFLITE", "CPU", "BLOB", tflite_mnist())
    assert ret == b"OK"
    con.execute_command("AI.TENSORSET", "a{1}", "FLOAT", 1, 1, 28, 28, "BLOB", one_raw())
    send_and_disconnect(gateway, "AI.MODELEXECUTE", "mnist{1}", "INPUTS", 1, "a{1}",
                        "OUTPUTS", 2, "b{1}", "c{1}")  # fmt: skip
    wait_until(lambda: con.execute_command("EXISTS", "b{1}", "c{1}") == 2, timeout=20)
    assert con.execute_command("AI.TENSORGET", "b{1}", "VALUES") == [1]


def test_tflite_info(con: redis.Redis, worker: Worker) -> None:
    """test_tflite_info (the 1.2.0-1.2.4 form, AI.INFO without a key: README, "Moving from
    RedisAI"): six entries, then TFLite's version once a worker loaded the backend."""
    assert len(con.execute_command("AI.INFO")) == 6
    con.execute_command("AI.MODELSTORE", "mnist{1}", "TFLITE", "CPU", "BLOB", tflite_mnist())
    ret = con.execute_command("AI.INFO")
    assert len(ret) == 8 and ret[6] == b"TFLite version"


# test_tflite_model_rdb_save_load checks RedisAI's RDB encoding (not replayed).


# tests_commands.py -----------------------------------------------------------------------------


def test_modelstore_device_errors(con: redis.Redis) -> None:
    """test_modelstore_errors' devices (its other checks are in test_gateway_redisai_suite.py):
    CPU or GPU, then optionally ``:`` and up to 5 digits."""
    for device in ("bad_device", "CPU::", "CPU:1.8", "CPU:123456"):
        assert error_of(con, "AI.MODELSTORE", "m{1}", "TORCH", device, "BLOB", b"blob") == (
            "Invalid DEVICE"
        ), device


def test_modelget(con: redis.Redis, worker: Worker) -> None:
    """test_modelget: its errors, and META with BLOB by default."""
    con.execute_command("SET", "NOT_MODEL{1}", "BAR")
    assert error_of(con, "AI.MODELGET", "NOT_MODEL{1}") == WRONGTYPE
    con.execute_command("DEL", "NOT_MODEL{1}")
    assert error_of(con, "AI.MODELGET", "DONT_EXIST{1}") == "model key is empty"
    graph = tf_mul_graph()
    con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", "INPUTS", 2, "a", "b",
                        "OUTPUTS", 1, "mul", "BLOB", graph)  # fmt: skip
    (_, backend, _, device, _, tag, _, batchsize, _, minbatchsize, _, inputs, _, outputs, _,
     minbatchtimeout, _, blob) = con.execute_command("AI.MODELGET", "m{1}")  # fmt: skip
    assert [backend, device, tag, batchsize, minbatchsize, minbatchtimeout, inputs, outputs] == (
        [b"TF", b"CPU", b"", 0, 0, 0, [b"a", b"b"], [b"mul"]]
    )
    assert blob == graph


def store_run_and_count(gateway: Gateway, key: str, iterations: int, own_key: bool) -> int:
    """tests_commands.py's create_run_update_models_parallel, one client: delete, store, run
    and read AI.INFO again and again; a client sharing its key with others may find the model
    gone between its commands, and then gets one of RedisAI's two messages."""
    con = connect(gateway)
    store = ("AI.MODELSTORE", key, "TF", "CPU", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul",
             "BLOB", tf_mul_graph())  # fmt: skip
    successes = 0
    try:
        assert con.execute_command(*store) == b"OK"
        for _ in range(iterations):
            try:
                con.execute_command("AI.MODELDEL", key)
                assert con.execute_command(*store) == b"OK"
                assert con.execute_command("AI.MODELEXECUTE", key, "INPUTS", 2, "a{1}", "b{1}",
                                           "OUTPUTS", 1, "c{1}") == b"OK"  # fmt: skip
                successes += 1
                stats = info(con, key)
                assert (stats["key"], stats["device"]) == (key, "CPU")
                if own_key:
                    assert stats["calls"] == 1
                    con.execute_command("AI.INFO", key, "RESETSTAT")
                    assert info(con, key)["calls"] == 0
            except redis.ResponseError as exc:
                assert not own_key and str(exc) in (
                    "model key is empty", "cannot find run info for key"
                ), exc  # fmt: skip
    finally:
        con.close()
    return successes


def test_ai_info_multiproc_multi_keys(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_ai_info_multiproc_multi_keys: clients each on a model of its own (20 processes of 50
    rounds there); every run succeeds, _MODELSCAN lists each model once."""
    set_ab(con, "a{1}", "b{1}")
    clients, rounds = 3, 3
    calls = [functools.partial(store_run_and_count, gateway, f"{n}_m{{1}}", rounds, True)
             for n in range(clients)]  # fmt: skip
    assert at_once(calls, timeout=120) == [rounds] * clients
    assert len(con.execute_command("AI._MODELSCAN")) == clients


def test_ai_info_multiproc_single_key(con: redis.Redis, gateway: Gateway, worker: Worker) -> None:
    """test_ai_info_multiproc_single_key: clients deleting, storing and running one model, the
    last model run at most once a client, every failure one of RedisAI's two messages. RedisAI
    also wanted a success a client: there the clients' commands ran in Redis's one thread, where
    a run nearly always followed its store; here another client's MODELDEL may land between any
    two commands of every round (on a loaded machine all of them failed, once in four runs)."""
    set_ab(con, "a{1}", "b{1}")
    clients, rounds = 3, 3
    assert con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", "INPUTS", 2, "a", "b",
                               "OUTPUTS", 1, "mul", "BLOB", tf_mul_graph()) == b"OK"  # fmt: skip
    calls = [functools.partial(store_run_and_count, gateway, "m{1}", rounds, False)] * clients
    successes = at_once(calls, timeout=120)
    assert all(isinstance(count, int) for count in successes)
    assert sum(count for count in successes if count is not None) <= clients * rounds
    assert 0 <= info(con, "m{1}")["calls"] <= clients


# test_ai_info_multiproc_with_llapi runs models from RedisAI's low-level API test module (a
# module internal: not replayed).


def test_ai_config(con: redis.Redis) -> None:
    """test_ai_config: the defaults, then a BACKENDSPATH (stored and answered; aiworker loads
    no backend from a path: README, "Moving from RedisAI")."""
    assert con.execute_command("AI.CONFIG", "GET", "BACKENDSPATH") is None
    assert con.execute_command("AI.CONFIG", "GET", "MODEL_CHUNK_SIZE") == 511 * 1024 * 1024
    path = "/opt/redisai/install-cpu/backends"
    assert con.execute_command("AI.CONFIG", "BACKENDSPATH", path) == b"OK"
    assert con.execute_command("AI.CONFIG", "GET", "BACKENDSPATH") == path.encode()
