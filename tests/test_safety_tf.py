"""TF graphs and SavedModels that touch files are refused at load unless allow_file_ops is set;
zipped SavedModels are extracted within max_model_extract_bytes."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import tf_frozen_function, tf_mul_graph, tf_saved_model_zip

from aiworker.backends.base import BackendOptions, ModelSpec
from aiworker.devices import parse_device
from aiworker.protocol.errors import AIError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
from aiworker.backends.tf import TFBackend  # noqa: E402 - needs TensorFlow

DEFAULT = TFBackend(BackendOptions())
ALLOWING = TFBackend(BackendOptions(allow_file_ops=True))


def spec(inputs: list[str] = [], outputs: list[str] = []) -> ModelSpec:  # noqa: B006
    return ModelSpec(
        key="m", device=parse_device("CPU"), inputs=tuple(inputs), outputs=tuple(outputs)
    )


def writing_graph() -> bytes:
    """``out`` = content, after writing ``content`` to the file named by ``path``."""
    graph = tf.Graph()
    with graph.as_default():
        path = tf.compat.v1.placeholder(tf.string, name="path")
        content = tf.compat.v1.placeholder(tf.string, name="content")
        write = tf.io.write_file(path, content, name="w")
        with tf.control_dependencies([write]):
            tf.identity(content, name="out")
    return bytes(graph.as_graph_def().SerializeToString())


def reading_function_graph() -> bytes:
    """A TF2 function calling another that reads a file: ReadFile lives in the function
    library, not among the graph's own nodes."""

    @tf.function
    def read(path: Any) -> Any:
        return tf.io.read_file(path)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="path")])
    def length(path: Any) -> Any:
        return tf.strings.length(read(path))

    graph_def = length.get_concrete_function().graph.as_graph_def()
    assert "ReadFile" not in {n.op for n in graph_def.node}
    assert "ReadFile" in {n.op for f in graph_def.library.function for n in f.node_def}
    return bytes(graph_def.SerializeToString())


def zipped(directory: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, _, files in os.walk(directory):
            for name in files:
                path = os.path.join(root, name)
                archive.write(path, os.path.relpath(path, directory))
    return buffer.getvalue()


def writing_saved_model() -> bytes:
    """A SavedModel whose serving function writes its input to a file it is given."""

    class Model(tf.Module):  # type: ignore[misc]
        @tf.function(
            input_signature=[
                tf.TensorSpec([], tf.string, name="path"),
                tf.TensorSpec([None], tf.float32, name="x"),
            ]
        )
        def __call__(self, path: Any, x: Any) -> Any:
            tf.io.write_file(path, tf.strings.reduce_join(tf.strings.as_string(x)))
            return {"y": x * 2}

    model = Model()
    with tempfile.TemporaryDirectory() as directory:
        tf.saved_model.save(model, directory, signatures={"serving_default": model.__call__})
        return zipped(directory)


def tf1_saved_model(restore_from: str = "") -> bytes:
    """A TF1 SavedModel (Saver, builder): its top-level RestoreV2 reads the fed variables path.
    ``restore_from``: rewire that RestoreV2's path to this tensor instead, as a crafted model
    would (``elsewhere`` is a constant naming another checkpoint)."""
    from tensorflow.core.protobuf import saved_model_pb2

    graph = tf.Graph()
    with tempfile.TemporaryDirectory() as parent:
        directory = os.path.join(parent, "model")
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
            x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
            weight = tf.compat.v1.get_variable("w", initializer=3.0)
            y = tf.multiply(x, weight, name="y")
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(directory)
            signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(
                session, ["serve"], signature_def_map={"serving_default": signature}
            )
            builder.save()
        if restore_from:
            path = os.path.join(directory, "saved_model.pb")
            saved = saved_model_pb2.SavedModel()
            with open(path, "rb") as handle:
                saved.ParseFromString(handle.read())
            graph_def = saved.meta_graphs[0].graph_def
            (restore,) = [n for n in graph_def.node if n.op == "RestoreV2"]
            graph_def.node.add().CopyFrom(_string_const("elsewhere", "/somewhere/else/variables"))
            restore.input[0] = restore_from
            with open(path, "wb") as handle:
                handle.write(saved.SerializeToString())
        return zipped(directory)


def _string_const(name: str, value: str) -> Any:
    node = tf.compat.v1.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = tf.string.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return node


def test_graphs_with_file_ops_are_refused(tmp_path: Path) -> None:
    blob = writing_graph()
    io_spec = spec(["path", "content"], ["out"])
    with pytest.raises(AIError) as info:
        DEFAULT.load(blob, io_spec)
    assert str(info.value).startswith("TF: operation 'WriteFile' (node 'w') reads or writes files")
    assert "allow_file_ops" in str(info.value)

    model = ALLOWING.load(blob, io_spec)  # allowed, it does what it was refused for
    target = tmp_path / "written"
    model.run([np.array(str(target).encode(), dtype=object), np.array(b"hello", dtype=object)])
    assert target.read_bytes() == b"hello"


def test_file_ops_in_the_function_library_are_refused() -> None:
    blob = reading_function_graph()
    io_spec = spec(["path"], ["Identity"])
    with pytest.raises(AIError, match=r"TF: operation 'ReadFile' \(node '.*' in function '.*read"):
        DEFAULT.load(blob, io_spec)
    ALLOWING.load(blob, io_spec)


def test_saved_models_with_file_ops_are_refused(tmp_path: Path) -> None:
    blob = writing_saved_model()
    with pytest.raises(AIError, match=r"TF: operation 'WriteFile' \(node '.*' in function"):
        DEFAULT.load(blob, spec())
    model = ALLOWING.load(blob, spec(["path", "x"], ["y"]))
    target = tmp_path / "written"
    out = model.run([np.array(str(target).encode(), dtype=object), np.ones(2, np.float32)])
    assert out[0].tolist() == [2.0, 2.0] and target.exists()


def test_ordinary_models_still_load() -> None:
    """The restore step of a SavedModel reads its own variables: that is not refused."""
    DEFAULT.load(tf_mul_graph(), spec(["a", "b"], ["mul"]))
    DEFAULT.load(tf_frozen_function(), spec(["x:0"], ["Identity"]))
    model = DEFAULT.load(tf_saved_model_zip(), spec(["x", "y"], ["sum"]))
    assert model.run([np.ones(2, np.float32), np.ones(2, np.float32)])[0].tolist() == [4.0, 4.0]
    model = DEFAULT.load(tf1_saved_model(), spec(["x"], ["y"]))
    assert model.run([np.ones(2, np.float32)])[0].tolist() == [3.0, 3.0]


@pytest.mark.parametrize("restore_from", ["elsewhere", "save/Const:1"])
def test_a_restore_step_reading_another_path_is_refused(restore_from: str) -> None:
    blob = tf1_saved_model(restore_from)
    with pytest.raises(AIError, match=r"TF: operation 'RestoreV2' \(node 'save/RestoreV2'\)"):
        DEFAULT.load(blob, spec(["x"], ["y"]))


# --- zipped SavedModels: extraction limits -----------------------------------------------------


def with_member(blob: bytes, info: zipfile.ZipInfo, data: bytes = b"x") -> bytes:
    buffer = io.BytesIO(blob)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr(info, data)
    return buffer.getvalue()


def test_a_zip_bomb_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where extraction would write
    zeros = zipfile.ZipInfo("variables/zeros.bin")
    zeros.compress_type = zipfile.ZIP_DEFLATED
    bomb = with_member(tf_saved_model_zip(), zeros, bytes(64 << 20))
    assert len(bomb) < 1 << 20
    limited = TFBackend(BackendOptions(max_model_extract_bytes=16 << 20))
    with pytest.raises(AIError) as info:
        limited.load(bomb, spec())
    assert "the zip archive unpacks to 67,1" in str(info.value)
    assert "max_model_extract_bytes (16,777,216)" in str(info.value)
    assert list(tmp_path.iterdir()) == [], "nothing was left behind"
    DEFAULT.load(bomb, spec(["x", "y"], ["sum"]))  # within the default 4 GiB


@pytest.mark.parametrize(
    ("name", "mode", "message"),
    [
        ("../escape.txt", 0o100644, "has a '..' path component"),
        ("variables/../../escape.txt", 0o100644, "has a '..' path component"),
        ("/tmp/absolute.txt", 0o100644, "has an absolute path"),
        ("variables/link", 0o120777, "is a symbolic link"),
    ],
)
def test_unsafe_member_names_are_refused(name: str, mode: int, message: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    blob = with_member(tf_saved_model_zip(), info, b"/etc/passwd")
    with pytest.raises(AIError) as caught:
        DEFAULT.load(blob, spec())
    assert str(caught.value) == f"Invalid SavedModel zip archive: member {name!r} {message}"
