"""RedisAI's own flow tests for DAGs and scripts, their checks replayed through the gateway:
``tests_dag_basic.py``, ``tests_dag.py``, ``tests_dag_errors.py``, the script checks of
``tests_pytorch.py`` and ``tests_commands.py``, and ``tests_torchscript_extensions.py`` (Redis
calls from scripts). Each expected reply and message is the one RedisAI's test asserted; where
aiworker differs on purpose, the case says so (README, "Moving from RedisAI").

RedisAI's tests load binaries from their test_data folder (resnet50.pb, creditcardfraud.pb,
pt-minimal.pt, graph.pb, mul_1.onnx): the models here are built locally with the same input and
output names, dtypes and shapes. Loops RedisAI ran up to 100 times run a few times: the replies
are the same each time, and the machine is shared. Checks already replayed in
``test_gateway_redisai_suite.py`` (most of ``tests_dag_errors.py`` and of SCRIPTEXECUTE's
errors) are not repeated."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import test_gateway
import test_gateway_redisai_suite
import test_redisai_compat
from builders import tf_mul_graph
from conftest import at_once, torch_blob, wait_until
from test_gateway import connect, error_of, raw_socket
from test_gateway_redisai_suite import WRONGTYPE

from aiworker import Client, Settings, Worker
from aiworker.client.raw import list2dict
from aiworker.gateway import Gateway
from aiworker.gateway.resp import pack

# RedisAI's test_data/script.txt: its bar and bar_variadic, then long_func
SCRIPT = (
    test_redisai_compat.SCRIPT
    + """
def long_func(tensors: List[Tensor], keys: List[str], args: List[str]):
    sum=0
    for i in range(10000000):
        sum+=1
"""
)
# test_data/old_script.txt (RedisAI 1.0's signatures)
OLD_SCRIPT = test_redisai_compat.SCRIPT_OLD
BAD_SCRIPT = """
def bar(tensors: List[Tensor], keys: List[str], args: List[Tensor]):
    a = tensors[0]
    b = tensors[1]
    return a + b

def bar_variadic(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    l = tensors[1:]
    return a + l[0]
"""

# test_data/imagenet/data_processing_script.txt
IMAGENET_SCRIPT = """
def pre_process_3ch(tensors: List[Tensor], keys: List[str], args: List[str]):
    image = tensors[0]
    return image.float().div(255).unsqueeze(0)

def pre_process_4ch(tensors: List[Tensor], keys: List[str], args: List[str]):
    image = tensors[0]
    return image.float().div(255)[:,:,:-1].contiguous().unsqueeze(0)

def post_process(tensors: List[Tensor], keys: List[str], args: List[str]):
    output = tensors[0]
    # tf model has 1001 classes, hence negative 1
    return output.max(1)[1] - 1

def ensemble(tensors: List[Tensor], keys: List[str], args: List[str]):
    output0 = tensors[0]
    output1 = tensors[1]
    return (output0 + output1) * 0.5
"""
IMAGENET_ENTRY_POINTS = ("ENTRY_POINTS", 4, "pre_process_3ch", "pre_process_4ch", "post_process",
                         "ensemble")  # fmt: skip

# test_data/redis_scripts.py; the copy of it that could be read lacked the last two functions,
# written here after what tests_torchscript_extensions.py asserts of them
REDIS_SCRIPTS = """
def redis_string_int_to_tensor(redis_value: Any):
    return torch.tensor(int(str(redis_value)))

def redis_string_float_to_tensor(redis_value: Any):
    return torch.tensor(float(str((redis_value))))

def redis_int_list_to_tensor(redis_value: Any):
    values = redis.asList(redis_value)
    l  = [torch.tensor(int(str(v))).reshape(1,1) for v in values]
    return torch.cat(l, dim=0)

def redis_hash_to_tensor(redis_value: Any):
    values = redis.asList(redis_value)
    l  = [torch.tensor(int(str(v))).reshape(1,1) for v in values]
    return torch.cat(l, dim=0)

def test_redis_error(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    redis.execute("SET", key)

def test_int_set_get(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    value = args[0]
    redis.execute("SET", key, value)
    res = redis.execute("GET", key)
    redis.execute("DEL", key)
    return redis_string_int_to_tensor(res)

def test_int_set_incr(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    value = args[0]
    redis.execute("SET", key, value)
    res = redis.execute("INCR", key)
    redis.execute("DEL", key)
    return redis_string_int_to_tensor(res)

def test_float_set_get(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    value = args[0]
    redis.execute("SET", key, value)
    res = redis.execute("GET", key)
    redis.execute("DEL", key)
    return redis_string_float_to_tensor(res)

def test_int_list(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    for value in args:
        redis.execute("RPUSH", key, value)
    res = redis.execute("LRANGE", key, "0", str(len(args)))
    redis.execute("DEL", key)
    return redis_int_list_to_tensor(res)

def test_str_list(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    for value in args:
        redis.execute("RPUSH", key, value)

def test_hash(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    command_args = [key]
    for s in args:
        command_args.append(s)
    redis.execute("HSET", command_args)
    res = redis.execute("HVALS", key)
    redis.execute("DEL", key)
    return redis_hash_to_tensor(res)

def test_set_key(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    value = args[0]
    redis.execute("SET", [key, value])

def test_model_execute(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = torch.tensor([[2.0, 3.0], [2.0, 3.0]])
    b = torch.tensor([[2.0, 3.0], [2.0, 3.0]])
    return redisAI.model_execute(keys[0], [a, b], 1)

def test_model_execute_onnx(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    return redisAI.model_execute(keys[0], [a], 1)

def test_model_execute_onnx_bad_input(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    return redisAI.model_execute(keys[0], [a], 1)

def test_redis_command_error(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0])

def test_redis_error_message(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], "value")
    redis.execute("HGET", keys[0], "field")
"""
REDIS_SCRIPTS_ENTRY_POINTS = [
    "test_redis_error", "test_set_key", "test_int_set_get", "test_int_set_incr",
    "test_float_set_get", "test_int_list", "test_str_list", "test_hash", "test_model_execute",
    "test_model_execute_onnx", "test_model_execute_onnx_bad_input", "test_redis_command_error",
    "test_redis_error_message",
]  # fmt: skip


@functools.cache
def imagenet_graph() -> bytes:
    """resnet50.pb's interface: ``images`` (N x H x W x 3, float) -> ``output`` (N x 1001)."""
    tf = pytest.importorskip("tensorflow")
    weights = np.random.default_rng(3).random((3, 1001), dtype=np.float32)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="images")
        tf.matmul(tf.reduce_mean(images, axis=[1, 2]), tf.constant(weights), name="output")
    return bytes(graph.as_graph_def().SerializeToString())


@functools.cache
def financial_graph() -> bytes:
    """creditcardfraud.pb's interface: ``transaction`` (N x 30) and ``reference`` (N x 256) ->
    ``output`` (N x 2, class probabilities)."""
    tf = pytest.importorskip("tensorflow")
    weights = np.random.default_rng(4).normal(0, 0.1, (286, 2)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        transaction = tf.compat.v1.placeholder(tf.float32, [None, 30], name="transaction")
        reference = tf.compat.v1.placeholder(tf.float32, [None, 256], name="reference")
        logits = tf.matmul(tf.concat([transaction, reference], 1), tf.constant(weights))
        tf.nn.softmax(logits, name="output")
    return bytes(graph.as_graph_def().SerializeToString())


@functools.cache
def onnx_square() -> bytes:
    """mul_1.onnx (onnxruntime's sample): ``X`` (3 x 2, float) -> ``Y`` = X * X."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, 2]) for n in "XY")
    graph = helper.make_graph([helper.make_node("Mul", ["X", "X"], ["Y"])], "mul_1", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def image() -> np.ndarray:
    """A small stand-in for the panda picture (H x W x 3, uint8)."""
    return np.random.default_rng(5).integers(0, 256, (16, 12, 3), dtype=np.uint8)


def creditcard_data(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Transactions (1 x 30) and references (1 x 256), as creditcardfraud's data."""
    rng = np.random.default_rng(6)
    return (rng.random((count, 1, 30), dtype=np.float32),
            rng.random((count, 1, 256), dtype=np.float32))  # fmt: skip


gateway = test_gateway_redisai_suite.gateway  # the fixtures: one gateway, a connection to it
con = test_gateway.con


@pytest.fixture
def two_devices(client: Client, settings: Settings) -> Iterator[Worker]:
    """A worker serving CPU and CPU:1, the devices of tests_dag.py's multi-device DAGs."""
    w = Worker(settings.replace(devices=("CPU", "CPU:1"))).start()
    yield w
    w.stop(timeout=10)


# tests_dag_basic.py --------------------------------------------------------------------------


def test_dag_basic_load_persist_and_local_tensors(con: redis.Redis, worker: Worker) -> None:
    """test_dag_load, test_dag(ro)_local_tensorset, test_dag_(multi)local_tensorset_persist,
    test_dag_local_tensorset_tensorget_persist, test_dag_local_multiple_tensorset_on_same_tensor,
    test_dag_load_persist_tensorset_tensorget, test_dag(_ro)_keyspace(_and_localcontext)_tensorget."""
    five_ten = [b"dtype", b"FLOAT", b"shape", [1, 2], b"values", [b"5", b"10"]]
    assert con.execute_command("AI.TENSORSET persisted_tensor_1{1} FLOAT 1 2 VALUES 5 10") == b"OK"
    ret = con.execute_command(
        "AI.DAGEXECUTE LOAD 1 persisted_tensor_1{1} |> AI.TENSORGET persisted_tensor_1{1} VALUES"
    )
    assert ret[0] == [b"5", b"10"]

    for head in ("AI.DAGEXECUTE ROUTING {1}", "AI.DAGEXECUTE_RO ROUTING {some_tag}"):
        ret = con.execute_command(
            f"{head} |> AI.TENSORSET volatile_tensor1 FLOAT 1 2 VALUES 5 10 "
            "|> AI.TENSORSET volatile_tensor2 FLOAT 1 2 VALUES 5 10 "
        )
        assert ret == [b"OK", b"OK"]
        # RedisAI's test looked for "volatile_tensor", a key no DAG names: these are the two
        assert con.execute_command("EXISTS volatile_tensor1 volatile_tensor2") == 0

    ret = con.execute_command(
        "AI.DAGEXECUTE PERSIST 1 tensor1{1} |> AI.TENSORSET tensor1{1} FLOAT 1 2 VALUES 5 10"
    )
    assert ret == [b"OK"]
    assert con.execute_command("EXISTS tensor1{1}") == 1
    assert con.execute_command("AI.TENSORGET tensor1{1} META VALUES") == five_ten
    con.execute_command("DEL tensor1{1}")

    ret = con.execute_command(
        "AI.DAGEXECUTE PERSIST 1 tensor3:{1} |> AI.TENSORSET tensor1{1} FLOAT 1 2 VALUES 5 10 "
        "|> AI.TENSORSET tensor2 FLOAT 1 2 VALUES 5 10 "
        "|> AI.TENSORSET tensor3:{1} FLOAT 1 2 VALUES 5 10 "
        "|> AI.TENSORSET tensor4:{1} FLOAT 1 2 VALUES 5 10 "
    )
    assert ret == [b"OK", b"OK", b"OK", b"OK"]
    exists = [con.execute_command("EXISTS", key) for key in
              ("tensor1{1}", "tensor2", "tensor3:{1}", "tensor4:{1}")]  # fmt: skip
    assert exists == [0, 0, 1, 0]
    assert con.execute_command("AI.TENSORGET tensor3:{1} META VALUES") == five_ten

    ret = con.execute_command(
        "AI.DAGEXECUTE PERSIST 1 tensor1{1} |> AI.TENSORSET tensor1{1} FLOAT 1 2 VALUES 5 10 "
        "|> AI.TENSORGET tensor1{1} VALUES"
    )
    assert ret == [b"OK", [b"5", b"10"]]
    assert con.execute_command("AI.TENSORGET tensor1{1} VALUES") == [b"5", b"10"]

    ret = con.execute_command(
        "AI.DAGEXECUTE PERSIST 1 tensor1{1} |> AI.TENSORSET tensor1{1} FLOAT 1 2 VALUES 5 10 "
        "|> AI.TENSORGET tensor1{1} META VALUES "
        "|> AI.TENSORSET tensor1{1} FLOAT 1 4 VALUES 20 40 60 80 "
        "|> AI.TENSORGET tensor1{1} META VALUES"
    )
    four = [b"dtype", b"FLOAT", b"shape", [1, 4], b"values", [b"20", b"40", b"60", b"80"]]
    assert ret == [b"OK", five_ten, b"OK", four]
    assert con.execute_command("AI.TENSORGET tensor1{1} META VALUES") == four

    assert con.execute_command("AI.TENSORSET persisted_tensor_2:{1} FLOAT 1 3 VALUES 0 0 0") == (
        b"OK"
    )
    ret = con.execute_command(
        "AI.DAGEXECUTE LOAD 2 persisted_tensor_1{1} persisted_tensor_2:{1}"
        " PERSIST 1 volatile_tensor_persisted{1} "
        "|> AI.TENSORSET volatile_tensor_persisted{1} FLOAT 1 2 VALUES 5 10 "
        "|> AI.TENSORGET persisted_tensor_1{1} META VALUES "
        "|> AI.TENSORGET persisted_tensor_2:{1} META VALUES "
    )
    zeros = [b"dtype", b"FLOAT", b"shape", [1, 3], b"values", [b"0", b"0", b"0"]]
    assert ret == [b"OK", five_ten, zeros]
    assert con.execute_command("AI.TENSORGET volatile_tensor_persisted{1} META VALUES") == five_ten

    assert con.execute_command("AI.TENSORSET persisted_tensor FLOAT 1 2 VALUES 5 10") == b"OK"
    for head in ("AI.DAGEXECUTE", "AI.DAGEXECUTE_RO"):
        ret = con.execute_command(f"{head} LOAD 1 persisted_tensor |> "
                                  "AI.TENSORGET persisted_tensor VALUES")  # fmt: skip
        assert ret == [[b"5", b"10"]]
    ret = con.execute_command(
        "AI.DAGEXECUTE LOAD 1 persisted_tensor |> AI.TENSORSET volatile_tensor FLOAT 1 2 VALUES 5 10"
        " |> AI.TENSORGET persisted_tensor VALUES |> AI.TENSORGET volatile_tensor VALUES"
    )
    assert ret == [b"OK", [b"5", b"10"], [b"5", b"10"]]


def test_dag_with_timeout(con: redis.Redis, worker: Worker) -> None:
    """test_dag_with_timeout: a model that waits for a batch of 2 (mobilenet there, the imagenet
    stand-in here, same input form), run twice in one DAG with TIMEOUT 1: TIMEDOUT."""
    img = image().astype(np.float32)
    con.execute_command("AI.MODELSTORE", "model{1}", "TF", "CPU", "BATCHSIZE", 2,
                        "MINBATCHSIZE", 2, "INPUTS", 1, "images", "OUTPUTS", 1, "output",
                        "BLOB", imagenet_graph())  # fmt: skip
    con.execute_command("AI.TENSORSET", "input{1}", "FLOAT", 1, img.shape[1], img.shape[0],
                        img.shape[2], "BLOB", img.tobytes())  # fmt: skip
    res = con.execute_command(
        "AI.DAGEXECUTE", "LOAD", "1", "input{1}", "TIMEOUT", 1,
        "|>", "AI.MODELEXECUTE", "model{1}", "INPUTS", 1, "input{1}", "OUTPUTS", 1, "output{1}",
        "|>", "AI.MODELEXECUTE", "model{1}", "INPUTS", 1, "input{1}", "OUTPUTS", 1, "output{1}",
    )  # fmt: skip
    assert res == b"TIMEDOUT"


def test_dag_with_error(con: redis.Redis, worker: Worker) -> None:
    """test_dag_with_error (and tests_dag_errors.py's test_dag_error_before_tensorget_op): a
    MODELEXECUTE op that TF refuses answers its error in its place, the TENSORGET after it NA."""
    ret = con.execute_command("AI.MODELSTORE", "tf_model{1}", "TF", "CPU", "INPUTS", 2, "a", "b",
                              "OUTPUTS", 1, "mul", "BLOB", tf_mul_graph())  # fmt: skip
    assert ret == b"OK"
    ret = con.execute_command(
        "AI.DAGEXECUTE_RO", "ROUTING", "{1}",
        "|>", "AI.TENSORSET", "a", "FLOAT", 2, "VALUES", 2, 3,
        "|>", "AI.TENSORSET", "b", "FLOAT", 2, 2, 3,
        "|>", "AI.MODELEXECUTE", "tf_model{1}", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "tD",
        "|>", "AI.TENSORGET", "tD", "VALUES",
    )  # fmt: skip
    assert ret[0] == b"OK" and ret[1] == b"OK" and ret[3] == b"NA"
    assert isinstance(ret[2], redis.ResponseError)
    assert "Incompatible shapes: [2] vs. [2,2,3] \t [[{{node mul}}]]" in str(ret[2])


# tests_dag_errors.py -------------------------------------------------------------------------


def test_dag_errors(con: redis.Redis, worker: Worker) -> None:
    """test_dag_common_errors, test_dag_ro_errors, test_dag_tensorget_tensorset_errors: the
    checks test_gateway_redisai_suite.py does not replay already."""
    stored = con.execute_command("AI.MODELSTORE", "m{1}", "TF", "CPU", "INPUTS", 2, "a", "b",
                                 "OUTPUTS", 1, "mul", "BLOB", tf_mul_graph())  # fmt: skip
    assert stored == b"OK"
    stored = con.execute_command("AI.SCRIPTSTORE", "script{1}", "CPU", "ENTRY_POINTS", 2, "bar",
                                 "bar_variadic", "SOURCE", SCRIPT)  # fmt: skip
    assert stored == b"OK"
    assert con.execute_command("AI.TENSORSET volatile_tensor{1} FLOAT 2 2 VALUES 5 10 5 10") == (
        b"OK"
    )
    cases = [
        (
            "Deprecated AI.SCRIPTRUN cannot be used in AI.DAGEXECUTE command",
            "AI.DAGEXECUTE LOAD 1 volatile_tensor{1} |> AI.SCRIPTRUN script{1} bar "
            "INPUTS volatile_tensor{1} volatile_tensor{1} OUTPUTS output_tensor{1}",
        ),
        ("missing arguments for 'AI.DAGEXECUTE_RO' command", "AI.DAGEXECUTE_RO "),
        (
            "AI.SCRIPTEXECUTE command cannot be specified in a read-only DAG",
            "AI.DAGEXECUTE_RO LOAD 1 volatile_tensor{1}"
            " |> AI.SCRIPTEXECUTE script{1} bar INPUTS 2 volatile_tensor{1} volatile_tensor{1}",
        ),
        (
            "wrong number of arguments for 'AI.TENSORGET' command",
            "AI.DAGEXECUTE ROUTING a{1} |> AI.TENSORSET a{1} FLOAT 1 |> AI.TENSORGET",
        ),
    ]
    for message, command in cases:
        assert error_of(con, command) == message, command


def test_dag_scriptexecute_errors(con: redis.Redis, worker: Worker) -> None:
    """test_dag_scriptexecute_errors: SCRIPTEXECUTE without a function name takes INPUTS for
    the name, then meets the count where INPUTS should have come."""
    img = image()
    con.execute_command("AI.MODELSTORE", "imagenet_model{1}", "TF", "CPU", "INPUTS", 1, "images",
                        "OUTPUTS", 1, "output", "BLOB", imagenet_graph())  # fmt: skip
    con.execute_command("AI.SCRIPTSTORE", "imagenet_script{1}", "CPU", *IMAGENET_ENTRY_POINTS,
                        "SOURCE", IMAGENET_SCRIPT)  # fmt: skip
    command = (
        "AI.DAGEXECUTE", "ROUTING", "{1}",
        "|>", "AI.TENSORSET", "image{1}", "UINT8", img.shape[1], img.shape[0], 3,
        "BLOB", img.tobytes(),
        "|>", "AI.SCRIPTEXECUTE", "imagenet_script{1}", "INPUTS", 1, "image{1}",
        "OUTPUTS", 1, "temp_key1{1}",
        "|>", "AI.MODELEXECUTE", "imagenet_model{1}", "INPUTS", 1, "temp_key1{1}",
        "OUTPUTS", 1, "temp_key2{1}",
        "|>", "AI.SCRIPTEXECUTE", "imagenet_script{1}", "post_process", "INPUTS", 1,
        "temp_key2{1}", "OUTPUTS", 1, "output{1}",
    )  # fmt: skip
    assert error_of(con, *command) == "Invalid AI.SCRIPTEXECUTE command. Unexpected argument: 1"


def test_dag_modelexecute_financial_net_errors(con: redis.Redis, worker: Worker) -> None:
    """test_dag_modelexecute_financialNet_errors: one input for a model of two."""
    _, references = creditcard_data(1)
    ret = con.execute_command("AI.MODELSTORE", "financialNet_errors{1}", "TF", "CPU", "INPUTS", 2,
                              "transaction", "reference", "OUTPUTS", 1, "output",
                              "BLOB", financial_graph())  # fmt: skip
    assert ret == b"OK"
    ret = con.execute_command("AI.TENSORSET", "referenceTensor:{1}1", "FLOAT", 1, 256,
                              "BLOB", references[0].tobytes())  # fmt: skip
    assert ret == b"OK"
    command = (
        "AI.DAGEXECUTE", "LOAD", "1", "referenceTensor:{1}1",
        "PERSIST", "1", "resultTensor:{1}1",
        "|>", "AI.TENSORSET", "transactionTensor:1", "FLOAT", 1, 30,
        "|>", "AI.MODELEXECUTE", "financialNet_errors{1}", "INPUTS", 1, "transactionTensor:1",
        "OUTPUTS", 1, "resultTensor:{1}1",
        "|>", "AI.TENSORGET", "resultTensor:{1}1", "META",
    )  # fmt: skip
    assert error_of(con, *command) == (
        "Number of keys given as INPUTS here does not match model definition"
    )


# test_dag_crossslot_violation_errors runs only on a cluster, and aiworker's rule there is not
# RedisAI's (README, "Redis Cluster": only a request's written keys and its reply must share a
# slot; its inputs may live anywhere), so its CROSSSLOT cases do not apply.


# tests_dag.py --------------------------------------------------------------------------------


def test_dagexecute_modelexecute_scriptexecute_resnet(con: redis.Redis, worker: Worker) -> None:
    """test_dagrun_modelexecute_scriptexecute_resnet: pre-process, model, post-process, the
    class persisted."""
    img = image()
    ret = con.execute_command("AI.MODELSTORE", "imagenet_model:{1}", "TF", "CPU", "INPUTS", 1,
                              "images", "OUTPUTS", 1, "output", "BLOB", imagenet_graph())  # fmt: skip
    assert ret == b"OK"
    ret = con.execute_command("AI.SCRIPTSTORE", "imagenet_script:{1}", "CPU",
                              *IMAGENET_ENTRY_POINTS, "SOURCE", IMAGENET_SCRIPT)  # fmt: skip
    assert ret == b"OK"
    for _ in range(3):
        ret = con.execute_command(
            "AI.DAGEXECUTE", "PERSIST", "1", "output:{1}",
            "|>", "AI.TENSORSET", "image:{1}", "UINT8", img.shape[1], img.shape[0], 3,
            "BLOB", img.tobytes(),
            "|>", "AI.SCRIPTEXECUTE", "imagenet_script:{1}", "pre_process_3ch",
            "INPUTS", 1, "image:{1}", "OUTPUTS", 1, "temp_key1",
            "|>", "AI.MODELEXECUTE", "imagenet_model:{1}", "INPUTS", 1, "temp_key1",
            "OUTPUTS", 1, "temp_key2",
            "|>", "AI.SCRIPTEXECUTE", "imagenet_script:{1}", "post_process",
            "INPUTS", 1, "temp_key2", "OUTPUTS", 1, "output:{1}",
        )  # fmt: skip
        assert ret == [b"OK", b"OK", b"OK", b"OK"]
        ret = con.execute_command("AI.TENSORGET", "output:{1}", "VALUES")
        assert 0 <= ret[0] < 1001


def store_financial_net(con: redis.Redis, key: str, *batching: Any) -> None:
    ret = con.execute_command("AI.MODELSTORE", key, "TF", "CPU", *batching, "INPUTS", 2,
                              "transaction", "reference", "OUTPUTS", 1, "output",
                              "BLOB", financial_graph())  # fmt: skip
    assert ret == b"OK"


def set_reference(con: redis.Redis, number: int, reference: np.ndarray) -> None:
    key = f"referenceTensor{{1}}{number}"
    assert con.execute_command("AI.TENSORSET", key, "FLOAT", 1, 256, "BLOB",
                               reference.tobytes()) == b"OK"  # fmt: skip
    assert con.execute_command("EXISTS", key) == 1


def financial_ops(number: int, transaction: np.ndarray, model: str) -> tuple[Any, ...]:
    """tests_dag.py's ops: set the transaction, run the model on it and the LOADed reference."""
    return (
        "|>", "AI.TENSORSET", f"transactionTensor{{1}}{number}", "FLOAT", 1, 30,
        "BLOB", transaction.tobytes(), *run_financial_net(number, model),
    )  # fmt: skip


def run_financial_net(number: int, model: str) -> tuple[Any, ...]:
    return (
        "|>", "AI.MODELEXECUTE", model, "INPUTS", 2, f"transactionTensor{{1}}{number}",
        f"referenceTensor{{1}}{number}", "OUTPUTS", 1, f"resultTensor{{1}}{number}",
    )  # fmt: skip


def test_dag_modelexecute_financial_net(con: redis.Redis, worker: Worker) -> None:
    """test_dag_modelexecute_financialNet(_separate_tensorget) and _no_writes: the result
    PERSISTed, read in the DAG or after it; without PERSIST nothing is written."""
    model = "financialNet{1}"
    store_financial_net(con, model)
    transactions, references = creditcard_data(3)
    meta = [b"dtype", b"FLOAT", b"shape", [1, 2]]
    for number in range(1, 3):
        result = f"resultTensor{{1}}{number}"
        load = ("AI.DAGEXECUTE", "LOAD", "1", f"referenceTensor{{1}}{number}")
        persist = (*load, "PERSIST", "1", result)
        ops = financial_ops(number, transactions[number], model)
        get = ("|>", "AI.TENSORGET", result, "META")
        for _ in range(2):
            set_reference(con, number, references[number])
            assert con.execute_command(*persist, *ops) == [b"OK", b"OK"]
            assert con.execute_command("AI.TENSORGET", result, "META") == meta
            con.execute_command("DEL", result)

            assert con.execute_command(*persist, *ops, *get) == [b"OK", b"OK", meta]
            assert con.execute_command("EXISTS", f"transactionTensor{{1}}{number}") == 0
            assert con.execute_command("EXISTS", result) == 1
            con.execute_command("DEL", result)

            ret = con.execute_command(*load, *ops, *get, "|>", "AI.TENSORGET", result, "VALUES")
            assert len(ret) == 4 and ret[:3] == [b"OK", b"OK", meta]
            assert all(0 <= float(value) <= 1 for value in ret[3])
            assert con.execute_command("EXISTS", f"transactionTensor{{1}}{number}", result) == 0


def test_dag_modelexecute_financial_net_autobatch(
    con: redis.Redis, gateway: Gateway, worker: Worker
) -> None:
    """test_dag_modelexecute_financialNet_autobatch: two DAGs at once on a model that runs only
    in batches of 2 (BATCHSIZE 2 MINBATCHSIZE 2)."""
    model = "financialNet{1}"
    store_financial_net(con, model, "BATCHSIZE", 2, "MINBATCHSIZE", 2)
    transactions, references = creditcard_data(3)
    for number in range(1, 3):
        set_reference(con, number, references[number])
        result = f"resultTensor{{1}}{number}"
        load = ("AI.DAGEXECUTE", "LOAD", "1", f"referenceTensor{{1}}{number}")
        ops = financial_ops(number, transactions[number], model)
        other = connect(gateway)
        persisting = (*load, "PERSIST", "1", result, *ops, "|>", "AI.TENSORGET", result, "META")
        background, ret = at_once([
            functools.partial(other.execute_command, *load, *ops),
            functools.partial(con.execute_command, *persisting),
        ])  # fmt: skip
        other.close()
        assert background == [b"OK", b"OK"]  # RedisAI's test did not read this one's reply
        assert ret == [b"OK", b"OK", [b"dtype", b"FLOAT", b"shape", [1, 2]]]
        assert con.execute_command("EXISTS", f"transactionTensor{{1}}{number}") == 0
        assert con.execute_command("EXISTS", result) == 1


def test_dagro_modelexecute_financial_net_no_writes_multiple_modelruns(
    con: redis.Redis, worker: Worker
) -> None:
    """test_dagro_modelexecute_financialNet_no_writes_multiple_modelruns: two runs in one
    read-only DAG, then AI.INFO's counters and RESETSTAT."""
    model = "financialNet_no_writes{1}"
    store_financial_net(con, model)
    transactions, references = creditcard_data(3)
    numbers, repetitions = range(1, 4), 2
    for number in numbers:
        get = ("|>", "AI.TENSORGET", f"resultTensor{{1}}{number}", "META", "VALUES")
        for _ in range(repetitions):
            set_reference(con, number, references[number - 1])
            ret = con.execute_command(
                "AI.DAGEXECUTE_RO", "LOAD", "1", f"referenceTensor{{1}}{number}",
                *financial_ops(number, transactions[number - 1], model), *get,
                *run_financial_net(number, model), *get,
            )  # fmt: skip
            assert len(ret) == 5 and ret[:2] == [b"OK", b"OK"] and ret[3] == b"OK"
            for _, dtype, _, shape, _, values in (ret[2], ret[4]):
                assert (dtype, shape) == (b"FLOAT", [1, 2])
                assert all(0 <= float(value) <= 1 for value in values)
    runs = 2 * len(numbers) * repetitions
    info = list2dict(con.execute_command("AI.INFO", model))
    assert (info["key"], info["type"], info["backend"]) == (model, "MODEL", "TF")
    assert info["duration"] > 0
    assert (info["samples"], info["calls"], info["errors"]) == (runs, runs, 0)
    con.execute_command("AI.INFO", model, "RESETSTAT")
    info = list2dict(con.execute_command("AI.INFO", model))
    assert (info["key"], info["type"], info["backend"]) == (model, "MODEL", "TF")
    assert [info[name] for name in ("duration", "samples", "calls", "errors")] == [0, 0, 0, 0]


# test_slowlog_time_dag_modelexecute_financialNet_(autobatch|no_writes) are not ported: they
# compare Redis' SLOWLOG entry for the AI.DAGEXECUTE command with AI.INFO's duration, and no
# AI.* command reaches Redis as one command through the gateway to be timed there.


def test_dagexecute_modelexecute_multidevice_resnet(con: redis.Redis, two_devices: Worker) -> None:
    """test_dagexecute_modelexecute_multidevice_resnet: one model on CPU:1, one on CPU."""
    img = image()
    tensorset = ("AI.TENSORSET", "image:{1}", "UINT8", img.shape[1], img.shape[0], 3,
                 "BLOB", img.tobytes())  # fmt: skip
    io = ("INPUTS", 1, "images", "OUTPUTS", 1, "output", "BLOB", imagenet_graph())
    for key, device in (("imagenet_model1:{1}", "CPU:1"), ("imagenet_model2:{1}", "CPU")):
        assert con.execute_command("AI.MODELSTORE", key, "TF", device, *io) == b"OK"
    ret = con.execute_command("AI.SCRIPTSTORE", "imagenet_script:{1}", "CPU:1",
                              *IMAGENET_ENTRY_POINTS, "SOURCE", IMAGENET_SCRIPT)  # fmt: skip
    assert ret == b"OK"
    missing = "INPUT key cannot be found in DAG"
    assert error_of(con, "AI.DAGEXECUTE", "ROUTING", "image:{1}",
                    "|>", "AI.SCRIPTEXECUTE", "imagenet_script:{1}", "pre_process_3ch",
                    "INPUTS", 1, "image:{1}", "OUTPUTS", 1, "temp_key1:{1}") == missing  # fmt: skip
    assert error_of(con, "AI.DAGEXECUTE", "ROUTING", "image:{1}",
                    "|>", "AI.MODELEXECUTE", "imagenet_model1:{1}",
                    "INPUTS", 1, "image:{1}", "OUTPUTS", 1, "temp_key1:{1}") == missing  # fmt: skip

    ret = con.execute_command("AI.DAGEXECUTE", "ROUTING", "{1}", "|>", *tensorset,
                              "|>", "AI.SCRIPTEXECUTE", "imagenet_script:{1}", "wrong_fn",
                              "INPUTS", 1, "image:{1}", "OUTPUTS", 1, "temp_key1:{1}")  # fmt: skip
    assert ret[0] == b"OK"
    assert isinstance(ret[1], redis.ResponseError)
    assert str(ret[1]) == "Function does not exist: wrong_fn"

    pre = ("|>", "AI.SCRIPTEXECUTE", "imagenet_script:{1}", "pre_process_3ch",
           "INPUTS", 1, "image:{1}", "OUTPUTS", 1, "temp_key1:{1}")  # fmt: skip
    assert error_of(con, "AI.DAGEXECUTE", "ROUTING", "{1}", "|>", *tensorset, *pre,
                    "|>", "AI.MODELEXECUTE", "imagenet_model1:{1}",
                    "INPUTS", 2, "temp_key1:{1}", "temp_key1:{1}",
                    "OUTPUTS", 1, "temp_key2_0") == (
        "Number of keys given as INPUTS here does not match model definition"
    )  # fmt: skip

    ret = con.execute_command(
        "AI.DAGEXECUTE", "PERSIST", "2", "output0:{1}", "output1:{1}", "|>", *tensorset, *pre,
        "|>", "AI.MODELEXECUTE", "imagenet_model1:{1}", "INPUTS", 1, "temp_key1:{1}",
        "OUTPUTS", 1, "temp_key2_0",
        "|>", "AI.MODELEXECUTE", "imagenet_model2:{1}", "INPUTS", 1, "temp_key1:{1}",
        "OUTPUTS", 1, "temp_key2_1",
        "|>", "AI.SCRIPTEXECUTE", "imagenet_script:{1}", "post_process",
        "INPUTS", 1, "temp_key2_0", "OUTPUTS", 1, "output0:{1}",
        "|>", "AI.SCRIPTEXECUTE", "imagenet_script:{1}", "post_process",
        "INPUTS", 1, "temp_key2_1", "OUTPUTS", 1, "output1:{1}",
    )  # fmt: skip
    assert ret == [b"OK"] * 6
    for key in ("output0:{1}", "output1:{1}"):
        assert 0 <= con.execute_command("AI.TENSORGET", key, "VALUES")[0] < 1001


def test_dagexecute_modelexecute_multidevice_resnet_ensemble_alias(
    con: redis.Redis, two_devices: Worker
) -> None:
    """test_dagexecute_modelexecute_multidevice_resnet_ensemble_alias: two models averaged by
    a script, an op's output key written again by a later op."""
    img = image()
    io = ("INPUTS", 1, "images", "OUTPUTS", 1, "output", "BLOB", imagenet_graph())
    for key, device in (("imagenet_model1:{1}", "CPU:1"), ("imagenet_model2:{1}", "CPU")):
        assert con.execute_command("AI.MODELSTORE", key, "TF", device, *io) == b"OK"
    for key, device in (("imagenet_script1:{1}", "CPU:1"), ("imagenet_script2:{1}", "CPU")):
        ret = con.execute_command("AI.SCRIPTSTORE", key, device, *IMAGENET_ENTRY_POINTS,
                                  "SOURCE", IMAGENET_SCRIPT)  # fmt: skip
        assert ret == b"OK"

    def dag(persist: tuple[Any, ...], model_input: str, ensemble: tuple[Any, ...]) -> list[Any]:
        return [
            "AI.DAGEXECUTE", "PERSIST", *persist,
            "|>", "AI.TENSORSET", "image:{1}", "UINT8", img.shape[1], img.shape[0], 3,
            "BLOB", img.tobytes(),
            "|>", "AI.SCRIPTEXECUTE", "imagenet_script1:{1}", "pre_process_3ch",
            "INPUTS", 1, "image:{1}", "OUTPUTS", 1, "temp_key1:{1}",
            "|>", "AI.MODELEXECUTE", "imagenet_model1:{1}", "INPUTS", 1, model_input,
            "OUTPUTS", 1, "temp_key2_0",
            "|>", "AI.MODELEXECUTE", "imagenet_model2:{1}", "INPUTS", 1, "temp_key1:{1}",
            "OUTPUTS", 1, "temp_key2_1",
            "|>", "AI.SCRIPTEXECUTE", *ensemble, "OUTPUTS", 1, "temp_key1:{1}",
            "|>", "AI.SCRIPTEXECUTE", "imagenet_script1:{1}", "post_process",
            "INPUTS", 1, "temp_key1:{1}", "OUTPUTS", 1, "output0:{1}",
        ]  # fmt: skip

    both = ("ensemble", "INPUTS", 2, "temp_key2_0", "temp_key2_1")
    assert error_of(con, *dag(("2", "output0:{1}", "output1:{1}"), "temp_key1:{1}",
                              ("imagenet_script2:{1}", *both))) == (
        "PERSIST key cannot be found in DAG"
    )  # fmt: skip
    assert error_of(con, *dag(("1", "output0:{1}"), "temp_key1:{1}_foo",
                              ("imagenet_script2:{1}", *both))) == (
        "INPUT key cannot be found in DAG"
    )  # fmt: skip
    # the ensemble given one input of its two
    one = ("imagenet_script1:{1}", "ensemble", "INPUTS", 1, "temp_key2_0")
    ret = con.execute_command(*dag(("1", "output0:{1}"), "temp_key1:{1}", one))
    assert ret[:4] == [b"OK"] * 4 and ret[5] == b"NA"
    assert isinstance(ret[4], redis.ResponseError)
    assert "list index out of range" in str(ret[4])
    assert con.execute_command("EXISTS", "output0:{1}") == 0

    ret = con.execute_command(*dag(("1", "output0:{1}"), "temp_key1:{1}",
                                   ("imagenet_script1:{1}", *both)))  # fmt: skip
    assert ret == [b"OK"] * 6
    assert 0 <= con.execute_command("AI.TENSORGET", "output0:{1}", "VALUES")[0] < 1001


# tests_pytorch.py and tests_commands.py: scripts -------------------------------------------


def test_pytorch_scriptstore_and_scriptdel(con: redis.Redis, worker: Worker) -> None:
    """test_pytorch_scriptstore (its malformed commands as tests_commands.py's test_scriptstore
    names them) and test_pytorch_scriptdel."""
    pytest.importorskip("torch")
    wrong = "wrong number of arguments for 'AI.SCRIPTSTORE' command"
    for args in [("ket{1}", "CPU", "SOURCE", "return 1"), ("nope{1}",), ("nope{1}", "SOURCE"),
                 ("more{1}", "CPU")]:  # fmt: skip
        assert error_of(con, "AI.SCRIPTSTORE", *args) == wrong, args
    entry_points = ("ENTRY_POINTS", 2, "bar", "bar_variadic")
    assert con.execute_command("AI.SCRIPTSTORE", "ket{1}", "CPU", *entry_points,
                               "SOURCE", SCRIPT) == b"OK"  # fmt: skip
    assert con.execute_command("AI.SCRIPTSTORE", "ket{1}", "CPU", "TAG", "asdf", *entry_points,
                               "SOURCE", SCRIPT) == b"OK"  # fmt: skip
    assert con.execute_command("AI.SCRIPTDEL", "ket{1}") == b"OK"
    assert not con.execute_command("EXISTS", "ket{1}")
    con.execute_command("DEL", "EMPTY")
    assert error_of(con, "AI.SCRIPTDEL", "EMPTY") == "script key is empty"
    con.execute_command("SET", "NOT_SCRIPT", "BAR")
    assert error_of(con, "AI.SCRIPTDEL", "NOT_SCRIPT") == WRONGTYPE


def test_scriptstore_errors(con: redis.Redis, worker: Worker) -> None:
    """tests_commands.py's test_scriptstore_errors: entry points checked against the source."""
    pytest.importorskip("torch")
    store = ("AI.SCRIPTSTORE", "ket{1}", "CPU")
    two = ("ENTRY_POINTS", 2, "bar", "bar_variadic", "SOURCE")
    cases = [
        (
            "Insufficient arguments, missing script entry points",
            ("NO_ENTRY_POINTS", 2, "bar", "bar_variadic", "SOURCE", SCRIPT),
        ),
        (
            "Non numeric entry points number provided to AI.SCRIPTSTORE command",
            ("ENTRY_POINTS", "ENTRY_POINTS", "bar", "bar_variadic", "SOURCE", SCRIPT),
        ),
        (
            "Function bar1 does not exist in the given script.",
            ("ENTRY_POINTS", 2, "bar", "bar1", "SOURCE", SCRIPT),
        ),
        ("Insufficient arguments, missing script SOURCE", two),
        ("Wrong number of inputs in function bar. Expected 3 but was 2", (*two, OLD_SCRIPT)),
        (
            "Wrong inputs type in function bar. Expected signature similar to: "
            "def bar(tensors: List[Tensor], keys: List[str], args: List[str])",
            (*two, BAD_SCRIPT),
        ),
        (
            "Insufficient arguments, missing script entry points",
            ("ENTRY_POINTS", 5, "bar", "bar_variadic", "SOURCE", SCRIPT),
        ),
    ]
    for message, args in cases:
        assert error_of(con, *store, *args) == message, args
    assert con.execute_command("EXISTS", "ket{1}") == 0


def test_keys_syntax(con: redis.Redis, worker: Worker) -> None:
    """tests_commands.py's test_keys_syntax."""
    pytest.importorskip("torch")
    assert con.execute_command("AI.SCRIPTSTORE", "script{1}", "CPU", "ENTRY_POINTS", 2, "bar",
                               "bar_variadic", "SOURCE", SCRIPT) == b"OK"  # fmt: skip
    con.execute_command("AI.TENSORSET", "a{1}", "FLOAT", 2, 2, "VALUES", 2, 3, 2, 3)
    cases = [
        ("Missing arguments after KEYS keyword", "AI.SCRIPTEXECUTE script{1} bar KEYS 1"),
        (
            "Invalid or negative value found in number of KEYS",
            "AI.SCRIPTEXECUTE script{1} bar KEYS not_number key{1}",
        ),
        (
            "Number of pre declared KEYS to be used in the command does not match the number "
            "of given arguments",
            "AI.SCRIPTEXECUTE script{1} bar KEYS 2 key{1}",
        ),
        (
            "KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command",
            "AI.SCRIPTEXECUTE script{1} bar OUTPUTS 2 a{1} a{1}",
        ),
    ]
    for message, command in cases:
        assert error_of(con, command) == message, command


def script_info(con: redis.Redis, key: str) -> dict[str, Any]:
    return list2dict(con.execute_command("AI.INFO", key))


def test_pytorch_scriptexecute_and_list_input(con: redis.Redis, worker: Worker) -> None:
    """test_pytorch_scriptexecute and test_pytorch_scriptexecute_list_input (a variadic list of
    tensors): the sums, and AI.INFO's statistics of the script."""
    pytest.importorskip("torch")
    runs = 5
    cases = [
        ("myscript{1}", "bar", "{1}", ("a{1}", "b{1}")),
        ("myscript{$}", "bar_variadic", "{$}", ("a{$}", "b1{$}", "b2{$}")),
    ]
    for key, function, tag, inputs in cases:
        assert con.execute_command("AI.SCRIPTSTORE", key, "CPU", "TAG", "version1", "ENTRY_POINTS",
                                   2, "bar", "bar_variadic", "SOURCE", SCRIPT) == b"OK"  # fmt: skip
        for name in inputs:
            assert con.execute_command("AI.TENSORSET", name, "FLOAT", 2, 2,
                                       "VALUES", 2, 3, 2, 3) == b"OK"  # fmt: skip
        output = f"c{tag}"
        for _ in range(runs):
            ret = con.execute_command("AI.SCRIPTEXECUTE", key, function, "KEYS", 1, tag,
                                      "INPUTS", len(inputs), *inputs, "OUTPUTS", 1, output)  # fmt: skip
            assert ret == b"OK"
        info = script_info(con, key)
        assert (info["key"], info["type"], info["backend"], info["tag"]) == (
            key, "SCRIPT", "TORCH", "version1"
        )  # fmt: skip
        assert info["duration"] > 0
        assert (info["samples"], info["calls"], info["errors"]) == (-1, runs, 0)
        assert con.execute_command("AI.TENSORGET", output, "VALUES") == [b"4", b"6", b"4", b"6"]


def test_pytorch_scriptexecute_variadic_errors(con: redis.Redis, worker: Worker) -> None:
    """test_pytorch_scriptexecute_variadic_errors: the commands whose message RedisAI's test did
    not check (test_gateway_redisai_suite.py replays the others)."""
    pytest.importorskip("torch")
    con.execute_command("AI.SCRIPTSTORE", "ket{$}", "CPU", "ENTRY_POINTS", 2, "bar",
                        "bar_variadic", "SOURCE", SCRIPT)  # fmt: skip
    con.execute_command("AI.TENSORSET", "b{$}", "FLOAT", 2, 2, "VALUES", 2, 3, 2, 3)
    run = ("AI.SCRIPTEXECUTE", "ket{$}", "bar_variadic", "KEYS", 1, "{$}")
    for args in [
        ("INPUTS", 2, "b{$}", "${$}", "OUTPUTS", 1, "c{$}"),
        ("INPUTS", 1, "b{$}", "OUTPUTS"),
        ("INPUTS", "OUTPUTS"),
    ]:
        error_of(con, *run, *args)


def test_pytorch_scriptinfo(con: redis.Redis, worker: Worker) -> None:
    """test_pytorch_scriptinfo: calls and duration grow with each run; RESETSTAT."""
    pytest.importorskip("torch")
    key = "ket_script{1}"
    assert con.execute_command("AI.SCRIPTSTORE", key, "CPU", "ENTRY_POINTS", 2, "bar",
                               "bar_variadic", "SOURCE", SCRIPT) == b"OK"  # fmt: skip
    for name in ("a{1}", "b{1}"):
        con.execute_command("AI.TENSORSET", name, "FLOAT", 2, 2, "VALUES", 2, 3, 2, 3)
    previous_duration = 0
    for call in range(1, 6):
        ret = con.execute_command("AI.SCRIPTEXECUTE", key, "bar", "KEYS", 1, "{1}", "INPUTS", 2,
                                  "a{1}", "b{1}", "OUTPUTS", 1, "c{1}")  # fmt: skip
        assert ret == b"OK"
        info = script_info(con, key)
        assert (info["key"], info["type"], info["backend"], info["device"]) == (
            key, "SCRIPT", "TORCH", "CPU"
        )  # fmt: skip
        assert info["duration"] > previous_duration
        assert (info["samples"], info["calls"], info["errors"]) == (-1, call, 0)
        previous_duration = info["duration"]
    assert con.execute_command("AI.INFO", key, "RESETSTAT") == b"OK"
    info = script_info(con, key)
    assert [info[name] for name in ("duration", "samples", "calls", "errors")] == [0, -1, 0, 0]


def test_pytorch_scriptexecute_disconnect(
    gateway: Gateway, con: redis.Redis, worker: Worker
) -> None:
    """test_pytorch_scriptexecute_disconnect: a client that sends a SCRIPTEXECUTE and leaves
    gets nothing and harms nothing (RedisAI's command, KEYS without its count, included)."""
    pytest.importorskip("torch")
    con.execute_command("AI.SCRIPTSTORE", "ket_script{1}", "CPU", "ENTRY_POINTS", 2, "bar",
                        "bar_variadic", "SOURCE", SCRIPT)  # fmt: skip
    for name in ("a{1}", "b{1}"):
        con.execute_command("AI.TENSORSET", name, "FLOAT", 2, 2, "VALUES", 2, 3, 2, 3)
    run = [b"AI.SCRIPTEXECUTE", b"ket_script{1}", b"bar", b"KEYS", b"{1}", b"INPUTS", b"2",
           b"a{1}", b"b{1}", b"OUTPUTS", b"1", b"c{1}"]  # fmt: skip
    well_formed = [*run[:4], b"1", *run[4:]]
    for command in (run, well_formed):
        sock = raw_socket(gateway)
        sock.sendall(b"".join(pack(command)))
        sock.close()
    # the well-formed run went on without its client
    wait_until(lambda: con.execute_command("EXISTS", "c{1}") == 1, timeout=20)
    assert con.execute_command("AI.TENSORGET", "c{1}", "VALUES") == [b"4", b"6", b"4", b"6"]


def test_pytorch_modelscan_scriptscan(con: redis.Redis, worker: Worker) -> None:
    """test_pytorch_modelscan_scriptscan: each entry a key and its tag."""
    pytest.importorskip("torch")
    model = torch_blob()
    for key, tag in (("m1", ("TAG", "m:v1")), ("m2", ())):
        assert con.execute_command("AI.MODELSTORE", key, "TORCH", "CPU", *tag,
                                   "BLOB", model) == b"OK"  # fmt: skip
    for key, tag in (("s1", ("TAG", "s:v1")), ("s2", ())):
        assert con.execute_command("AI.SCRIPTSTORE", key, "CPU", *tag, "ENTRY_POINTS", 2, "bar",
                                   "bar_variadic", "SOURCE", SCRIPT) == b"OK"  # fmt: skip
    for command in ("AI._MODELSCAN", "AI._SCRIPTSCAN"):
        ret = con.execute_command(command)
        assert len(ret[0]) == 2 and len(ret[1]) == 2, command


# tests_torchscript_extensions.py: Redis calls from scripts ----------------------------------


@pytest.fixture
def redis_scripts(con: redis.Redis, worker: Worker) -> redis.Redis:
    """The class's set-up: the script and a TF, a TORCH and an ONNX model."""
    pytest.importorskip("torch")
    ret = con.execute_command("AI.SCRIPTSTORE", "redis_scripts{1}", "CPU", "ENTRY_POINTS",
                              len(REDIS_SCRIPTS_ENTRY_POINTS), *REDIS_SCRIPTS_ENTRY_POINTS,
                              "SOURCE", REDIS_SCRIPTS)  # fmt: skip
    assert ret == b"OK"
    ret = con.execute_command("AI.MODELSTORE", "model_tf{1}", "TF", "CPU", "INPUTS", 2, "a", "b",
                              "OUTPUTS", 1, "mul", "BLOB", tf_mul_graph())  # fmt: skip
    assert ret == b"OK"
    ret = con.execute_command("AI.MODELSTORE", "model_torch{1}", "TORCH", "CPU",
                              "BLOB", torch_blob())  # fmt: skip
    assert ret == b"OK"
    ret = con.execute_command("AI.MODELSTORE", "model_onnx{1}", "ONNX", "CPU",
                              "BLOB", onnx_square())  # fmt: skip
    assert ret == b"OK"
    return con


def run_script(con: redis.Redis, function: str, key: str, *rest: Any) -> Any:
    return con.execute_command("AI.SCRIPTEXECUTE", "redis_scripts{1}", function,
                               "KEYS", 1, key, *rest)  # fmt: skip


def test_redis_error(redis_scripts: redis.Redis) -> None:
    """test_redis_error. RedisAI answered ``Redis command returned an error: Invalid argument``
    (within TorchScript's traceback) for a SET without its value; aiworker passes Redis' own
    error on (README, "Moving from RedisAI": scripts calling Redis)."""
    con = redis_scripts
    with pytest.raises(redis.ResponseError) as info:
        run_script(con, "test_redis_command_error", "x{1}")
    assert str(info.value) == (
        "Redis command returned an error: ERR wrong number of arguments for 'set' command"
    )
    with pytest.raises(redis.ResponseError) as info:
        run_script(con, "test_redis_error_message", "hash{1}")
    assert f"Redis command returned an error: {WRONGTYPE}" in str(info.value)


def test_redis_calls_from_scripts(redis_scripts: redis.Redis) -> None:
    """test_simple_test_set, test_int_set_get, test_int_set_incr, test_float_get_set,
    test_int_list, test_str_list, test_hash."""
    con = redis_scripts
    run_script(con, "test_set_key", "x{1}", "ARGS", 1, 1)
    assert con.get("x{1}") == b"1"
    int64 = [b"dtype", b"INT64", b"shape"]
    for function, value, expected in (("test_int_set_get", 1, [1]), ("test_int_set_incr", 1, [2])):
        run_script(con, function, "x{1}", "ARGS", 1, value, "OUTPUTS", 1, "y{1}")
        y = con.execute_command("AI.TENSORGET", "y{1}", "meta", "VALUES")
        assert y == [*int64, [], b"values", expected], function
    run_script(con, "test_float_set_get", "x{1}", "ARGS", 1, 1.1, "OUTPUTS", 1, "y{1}")
    y = con.execute_command("AI.TENSORGET", "y{1}", "meta", "VALUES")
    assert y[:5] == [b"dtype", b"FLOAT", b"shape", [], b"values"]
    assert float(y[5][0]) == pytest.approx(1.1, abs=0.1)
    run_script(con, "test_int_list", "int_list{1}", "ARGS", 2, 1, 2, "OUTPUTS", 1, "y{1}")
    y = con.execute_command("AI.TENSORGET", "y{1}", "meta", "VALUES")
    assert y == [*int64, [2, 1], b"values", [1, 2]]
    run_script(con, "test_str_list", "str_list{1}", "ARGS", 2, "1", "2")
    assert con.execute_command("LRANGE", "str_list{1}", "0", "2") == [b"1", b"2"]
    run_script(con, "test_hash", "hash{1}", "ARGS", 4, "field1", 1, "field2", 2,
               "OUTPUTS", 1, "y{1}")  # fmt: skip
    y = con.execute_command("AI.TENSORGET", "y{1}", "meta", "VALUES")
    assert y == [*int64, [2, 1], b"values", [1, 2]]


def test_execute_model_via_script(redis_scripts: redis.Redis) -> None:
    """test_execute_model_via_script and test_execute_model_via_script_errors."""
    con = redis_scripts
    cases = [
        ("test_model_execute", "model_torch{1}", [2, 2], [b"4", b"6", b"4", b"6"]),
        ("test_model_execute", "model_tf{1}", [2, 2], [b"4", b"9", b"4", b"9"]),
        ("test_model_execute_onnx", "model_onnx{1}", [3, 2],
         [b"1", b"4", b"9", b"16", b"25", b"36"]),
    ]  # fmt: skip
    for function, model, shape, values in cases:
        run_script(con, function, model, "OUTPUTS", 1, "y{1}")
        y = con.execute_command("AI.TENSORGET", "y{1}", "meta", "VALUES")
        assert y == [b"dtype", b"FLOAT", b"shape", shape, b"values", values], model
    # RedisAI's test looked for "ERR model key is empty" inside TorchScript's traceback; aiworker
    # answers the error itself, without the code at its start (README, "Moving from RedisAI")
    assert error_of(con, "AI.SCRIPTEXECUTE", "redis_scripts{1}", "test_model_execute_onnx",
                    "KEYS", 1, "bad_model{1}", "OUTPUTS", 1, "y{1}") == "model key is empty"  # fmt: skip
    message = error_of(con, "AI.SCRIPTEXECUTE", "redis_scripts{1}",
                       "test_model_execute_onnx_bad_input", "KEYS", 1, "model_onnx{1}",
                       "OUTPUTS", 1, "y{1}")  # fmt: skip
    # onnxruntime's own text, passed on as it came: its wording after "the inputs" changed in
    # the releases since RedisAI's (now "the inputs/outputs or the model.")
    assert message.startswith(
        "Invalid rank for input: X Got: 1 Expected: 2 Please fix either the inputs"
    )
