"""ONNX models that need custom-op libraries (native code) and TFLite models with Flex or custom
file ops are refused at load unless allow_file_ops is set; the worker registers no op library."""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

import numpy as np
import pytest
from builders import onnx_mul, sklearn_classifier, tflite_model
from conftest import ROOT

from aiworker.backends.base import BackendOptions, ModelSpec
from aiworker.devices import parse_device
from aiworker.protocol.errors import AIError

SPEC = ModelSpec(key="m", device=parse_device("CPU"))
HINT = "allow_file_ops"


# --- ONNX --------------------------------------------------------------------------------------


def onnx_model(nodes: list[Any], opsets: dict[str, int], functions: list[Any] = ()) -> bytes:  # type: ignore[assignment]
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in "ac"]
    graph = helper.make_graph(nodes, "g", spec[:1], spec[1:])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        functions=list(functions),
    )
    model.ir_version = 8
    return bytes(onnx.ModelProto.SerializeToString(model))


def onnx_backends() -> tuple[Any, Any]:
    pytest.importorskip("onnxruntime")
    from aiworker.backends.onnx import ONNXBackend

    return ONNXBackend(BackendOptions()), ONNXBackend(BackendOptions(allow_file_ops=True))


def test_onnx_custom_domains_are_refused() -> None:
    from onnx import helper

    default, allowing = onnx_backends()
    blob = onnx_model(
        [helper.make_node("ReadFile", ["a"], ["c"], name="leak", domain="com.example.io")],
        {"": 13, "com.example.io": 1},
    )
    with pytest.raises(AIError) as info:
        default.load(blob, SPEC)
    assert str(info.value).startswith(
        "ONNX: opset domain 'com.example.io' needs a custom-op library (native code)"
    )
    assert HINT in str(info.value)
    # Allowed, it reaches onnxruntime, which has no such op: the worker registers no library.
    with pytest.raises(AIError) as info:
        allowing.load(blob, SPEC)
    assert HINT not in str(info.value) and "ReadFile" in str(info.value)


def test_onnx_nodes_in_undeclared_domains_and_python_ops_are_refused() -> None:
    from onnx import helper

    default, _ = onnx_backends()
    node = helper.make_node("PythonOp", ["a"], ["c"], name="py", domain="com.microsoft")
    blob = onnx_model([node], {"": 13, "com.microsoft": 1})
    with pytest.raises(AIError, match=r"ONNX: operator 'PythonOp' of domain 'com.microsoft'"):
        default.load(blob, SPEC)


def test_onnx_model_local_functions_are_plain_onnx() -> None:
    """A function the model defines itself, in a domain of its own, is made of standard ops."""
    from onnx import helper

    default, _ = onnx_backends()
    twice = helper.make_function(
        "local.fns", "Twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_opsetid("", 13)],
    )  # fmt: skip
    blob = onnx_model(
        [helper.make_node("Twice", ["a"], ["c"], domain="local.fns")],
        {"": 13, "local.fns": 1},
        [twice],
    )
    model = default.load(blob, SPEC)
    assert model.run([np.array([1.0, 2.0], np.float32)])[0].tolist() == [2.0, 4.0]


def test_ordinary_onnx_models_still_load() -> None:
    default, _ = onnx_backends()
    default.load(onnx_mul(), SPEC)
    default.load(sklearn_classifier()[0], SPEC)  # ONNX-ML (ai.onnx.ml) operators


def test_the_worker_registers_no_native_op_library() -> None:
    """Custom-op libraries and op-library loaders are native code: nothing in the package may
    load one (onnxruntime, TensorFlow and torch only do so when told to). The one native library
    the package opens itself is the C library: for its malloc settings (``aiworker.malloc``) and
    for ``aiworker up``'s parent-death signal (``aiworker.embedded``, the process's own symbols)."""
    pattern = re.compile(r"register_custom_ops_library|load_op_library|load_library|ctypes|cdll")
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "aiworker").rglob("*.py")
        if pattern.search(path.read_text())
    )
    assert offenders == ["aiworker/embedded.py", "aiworker/malloc.py"]
    for name, library in (("malloc.py", '"libc.so.6"'), ("embedded.py", "None, use_errno=True")):
        source = (ROOT / "aiworker" / name).read_text()
        assert re.findall(r"CDLL\(([^)]*)\)", source) == [library]
        assert not re.search(r"register_custom_ops_library|load_op_library|load_library", source)


# --- TFLite ------------------------------------------------------------------------------------


def tflite_reading_file(flex: bool) -> bytes:
    """``path`` -> length of the file's contents, as a Flex op (SELECT_TF_OPS) or as an
    unresolved custom op."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="path")])
    def read(path: Any) -> Any:
        return tf.strings.length(tf.io.read_file(path))

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [read.get_concrete_function()], read
    )
    if flex:
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS,
            tf.lite.OpsSet.SELECT_TF_OPS,
        ]
    else:
        converter.allow_custom_ops = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return bytes(converter.convert())


def tflite_backends() -> tuple[Any, Any]:
    from aiworker.backends.tflite import TFLiteBackend

    return TFLiteBackend(BackendOptions()), TFLiteBackend(BackendOptions(allow_file_ops=True))


@pytest.mark.parametrize(
    ("flex", "message"),
    [
        (True, "TFLITE: Flex op 'FlexReadFile' (TensorFlow op 'ReadFile')"),
        (False, "TFLITE: custom op 'ReadFile'"),
    ],
)
def test_tflite_file_ops_are_refused(flex: bool, message: str) -> None:
    blob = tflite_reading_file(flex)
    default, allowing = tflite_backends()
    with pytest.raises(AIError) as info:
        default.load(blob, SPEC)
    assert str(info.value).startswith(message) and HINT in str(info.value)
    # allowed: the interpreter cannot resolve the op, unless it finds a Flex delegate for a Flex
    # op (TensorFlow 2.15, imported in the same process, provides one)
    try:
        allowing.load(blob, SPEC)
    except AIError as exc:
        assert str(exc) == "Failed to load model from buffer"
    else:
        assert flex, "a custom op no runtime implements was loaded"


def test_ordinary_tflite_models_still_load() -> None:
    default, _ = tflite_backends()
    default.load(tflite_model(), SPEC)
    default.load(tflite_model(quantized=True), SPEC)
    with pytest.raises(AIError, match=r"^Failed to load model from buffer$"):
        default.load(b"\x00" * 64, SPEC)


def test_a_flex_ops_node_def_is_read_without_tensorflow() -> None:
    """The op a Flex delegate runs is its NodeDef's ``op`` (field 2), whatever the op is named."""
    from aiworker.backends.safety.tflite_ops import _proto_string

    node_def = b"\x0a\x04name\x12\x0cStringLength\x12\x08ReadFile\x1a\x00"
    assert _proto_string(node_def, 2) == "ReadFile"  # the last value wins, as in protobuf
    assert _proto_string(b"\x12\x80", 2) is None  # truncated
