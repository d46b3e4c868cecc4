"""Small models built in each framework for the backend tests: nothing is downloaded.

Each builder imports its framework when called (``pytest.importorskip``), and is cached, so a model
is built once per test session however many tests use it.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import warnings
import zipfile
from typing import Any

import numpy as np
import pytest

# Iris-like synthetic data: three well-separated classes of four features.
_rng = np.random.default_rng(0)
IRIS_X = np.concatenate([_rng.normal(c, 0.3, (20, 4)) for c in (0.0, 2.0, 4.0)]).astype(np.float32)
IRIS_Y = np.repeat([0, 1, 2], 20)


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quiet C++ start-up logs in test output
    return pytest.importorskip("tensorflow")


@functools.cache
def tf_mul_graph() -> bytes:
    """RedisAI's graph.pb: placeholders ``a`` and ``b``, output node ``mul`` = a * b."""
    tf = _tf()
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, name="a")
        b = tf.compat.v1.placeholder(tf.float32, name="b")
        tf.multiply(a, b, name="mul")
    return bytes(graph.as_graph_def().SerializeToString())


@functools.cache
def tf_frozen_function() -> bytes:
    """A TF2 ``tf.function`` with a variable, frozen to constants: input ``x``, output
    ``Identity`` = 3 * x."""
    tf = _tf()
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    weight = tf.Variable(3.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def triple(x: Any) -> Any:
        return x * weight

    frozen = convert_variables_to_constants_v2(triple.get_concrete_function())
    return bytes(frozen.graph.as_graph_def().SerializeToString())


@functools.cache
def tf_slow_graph() -> bytes:
    """``x`` -> ``out``: a while loop of 200k steps (slow enough to pass a 1 ms limit)."""
    tf = _tf()
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, name="x")
        _, total = tf.while_loop(
            lambda i, v: i < 200_000, lambda i, v: (i + 1, v + 1.0), [tf.constant(0), x]
        )
        tf.identity(total, name="out")
    return bytes(graph.as_graph_def().SerializeToString())


@functools.cache
def tf_saved_model_zip(top_folder: str = "") -> bytes:
    """A zipped SavedModel: signature inputs ``x``, ``y``; outputs ``sum`` = x + 3y, ``prod``."""
    tf = _tf()

    class Model(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.weight = tf.Variable(3.0)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32, name="x"),
                tf.TensorSpec([None], tf.float32, name="y"),
            ]
        )
        def __call__(self, x: Any, y: Any) -> Any:
            return {"sum": x + y * self.weight, "prod": x * y}

    model = Model()
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as directory:
        tf.saved_model.save(model, directory, signatures={"serving_default": model.__call__})
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for root, _, files in os.walk(directory):
                for name in files:
                    path = os.path.join(root, name)
                    archive.write(path, os.path.join(top_folder, os.path.relpath(path, directory)))
    return buffer.getvalue()


def _tflite_function() -> Any:
    tf = _tf()
    weights = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def dense(x: Any) -> Any:
        return tf.matmul(x, weights) + 1.0

    return tf, dense


def tflite_expected(x: np.ndarray) -> np.ndarray:
    """What the TFLite test model computes: x @ W + 1."""
    return np.asarray(x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10) + 1.0)


@functools.cache
def tflite_model(quantized: bool = False) -> bytes:
    """x (None x 4) -> x @ W + 1 (None x 3). ``quantized``: full int8 with int8 inputs/outputs,
    calibrated on values in [0, 1)."""
    tf, dense = _tflite_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [dense.get_concrete_function()], dense
    )
    if quantized:
        rng = np.random.default_rng(1)

        def representative() -> Any:
            for _ in range(32):
                yield [rng.random((1, 4), dtype=np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():  # the converter nags about input statistics it does not need
        warnings.simplefilter("ignore", UserWarning)
        return bytes(converter.convert())


def _onnx() -> Any:
    return pytest.importorskip("onnx")


@functools.cache
def onnx_mul() -> bytes:
    """An ``onnx.helper`` graph: inputs ``a``, ``b``; output ``c`` = a * b (float)."""
    onnx = _onnx()
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in "abc"]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "b"], ["c"])], "mul", spec[:2], spec[2:]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@functools.cache
def onnx_unstorable_outputs() -> bytes:
    """Outputs no tensor hash holds: ``idx`` = NonZero(``x``) (shape 1 x 0 when ``x`` is all
    zeros, as a detector finding nothing) and ``s``, a constant STRING with a NUL inside."""
    onnx = _onnx()
    from onnx import TensorProto, helper

    strings = helper.make_tensor("v", TensorProto.STRING, [2], [b"a\x00b", b"ok"])
    graph = helper.make_graph(
        [
            helper.make_node("NonZero", ["x"], ["idx"]),
            helper.make_node("Constant", [], ["s"], value=strings),
        ],
        "unstorable",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [
            helper.make_tensor_value_info("idx", TensorProto.INT64, [1, None]),
            helper.make_tensor_value_info("s", TensorProto.STRING, [2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@functools.cache
def onnx_empty_optional() -> bytes:
    """Outputs ``o``, an optional tensor holding nothing, and ``y`` = ``x``."""
    onnx = _onnx()
    from onnx import TensorProto, helper

    element = helper.make_tensor_type_proto(TensorProto.FLOAT, [2])
    graph = helper.make_graph(
        [
            helper.make_node("Optional", [], ["o"], type=element),
            helper.make_node("Identity", ["x"], ["y"]),
        ],
        "empty_optional",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [
            helper.make_value_info("o", helper.make_optional_type_proto(element)),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@functools.cache
def onnx_loop() -> bytes:
    """A Loop that runs ``n`` times adding 1 to ``v`` (RedisAI's kill-switch test model)."""
    _onnx()
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
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
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "c", "v"], ["out"], body=body)],
        "loop",
        [
            helper.make_tensor_value_info("n", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@functools.cache
def onnx_external_data() -> bytes:
    """``c`` = a * w where ``w`` lives in an external file (refused)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones(3, np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in "ac"]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "w"], ["c"])], "ext", spec[:1], spec[1:], [weight]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(onnx.ModelProto.SerializeToString(model))


@functools.cache
def sklearn_classifier(string_labels: bool = False) -> tuple[bytes, Any]:
    """A LogisticRegression on iris-like data through skl2onnx (ZipMap on: probabilities come as
    a sequence of maps). Returns the ONNX blob and the fitted classifier."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    skl2onnx = pytest.importorskip("skl2onnx")
    labels = np.array(["setosa", "versicolor", "virginica"])[IRIS_Y] if string_labels else IRIS_Y
    classifier = linear_model.LogisticRegression(max_iter=500).fit(IRIS_X, labels)
    model = skl2onnx.to_onnx(classifier, IRIS_X[:1], target_opset=15)
    return bytes(model.SerializeToString()), classifier
