"""TF backend: frozen GraphDefs (RedisAI's format) and zipped SavedModels, on TensorFlow 2.x.

Both run in a ``tf.compat.v1.Session`` of their own, as RedisAI's TF backend ran them: the session
carries INTER_OP/INTRA_OP_PARALLELISM, runs are thread-safe, and MODEL_EXECUTION_TIMEOUT becomes the
run's deadline, so TensorFlow cancels a run that passes it.

- A frozen GraphDef is stored with INPUTS/OUTPUTS naming graph operations (their output 0, as in
  RedisAI) or tensors (``name:1``).
- A SavedModel directory stored as a zip archive (something RedisAI could not run) is extracted to
  a temporary directory (within max_model_extract_bytes, see ``archive.py``), loaded (variables
  restored, assets read) and the directory removed. Its serving signature names the inputs and
  outputs: INPUTS/OUTPUTS, when given, choose and order signature keys; otherwise the keys are used
  in sorted order.

Graphs that read or write files are refused before they are imported unless the operator allows
them (``safety``). Inputs are fed through ``feed_dict``, which converts (and may copy) each array;
on a GPU the session copies them to the device itself, so ``host_buffer`` is the plain default.
"""

from __future__ import annotations

import io
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aiworker.backends import archive, safety
from aiworker.backends.base import Backend, LoadedModel, ModelSpec
from aiworker.backends.util import as_array, check_run_time, clock, one_line, timeout_error
from aiworker.devices import Device, placement
from aiworker.protocol import messages
from aiworker.protocol.backend_names import is_zip
from aiworker.protocol.errors import AIError, BareMessage, CountMismatch

try:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
except ImportError as exc:  # the registry turns this into a hint naming the extra
    raise ImportError(f"TensorFlow is not installed: {exc}") from exc

SERVING_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
_NODE_LINE = re.compile(r"\nNode: '[^']*'\n(.*?)(?:\n\nOriginal stack trace|\Z)", re.S)


def op_error_text(exc: tf.errors.OpError) -> str:
    """TensorFlow's own message, without the Python graph-interpolation preamble and trailer.

    RedisAI's clients saw the C API's status text, e.g.
    ``Incompatible shapes: [2] vs. [2,2,3] \\t [[{{node mul}}]]``.
    """
    text = str(exc.message)
    match = _NODE_LINE.search(text)
    return BareMessage(one_line(match.group(1) if match else text))  # no error code, as RedisAI's


class TFModel(LoadedModel):
    """A session plus the tensors a run feeds and fetches."""

    def __init__(
        self,
        session: tf.compat.v1.Session,
        inputs: Sequence[tf.Tensor],
        outputs: Sequence[tf.Tensor],
        limit_ms: int,
        nbytes: int,
    ) -> None:
        self.session = session
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.limit_ms = limit_ms
        self.nbytes = nbytes
        self.run_options = tf.compat.v1.RunOptions(timeout_in_ms=limit_ms) if limit_ms > 0 else None

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            raise CountMismatch(messages.MODEL_INPUT_COUNT)
        feed = {
            tensor: np.asarray(value) for tensor, value in zip(self.inputs, inputs, strict=True)
        }
        started = clock()
        try:
            results = self.session.run(self.outputs, feed_dict=feed, options=self.run_options)
        except tf.errors.DeadlineExceededError:
            raise timeout_error(self.limit_ms, (clock() - started) * 1000) from None
        except tf.errors.OpError as exc:
            raise AIError(op_error_text(exc)) from None
        check_run_time(started, self.limit_ms)
        return [as_array(value) for value in results]

    def close(self) -> None:
        self.session.close()


# Ops whose value a run feeds: a PlaceholderWithDefault fed is one too (its default unused).
_PLACEHOLDERS = ("Placeholder", "PlaceholderWithDefault")


def _relax_input_shapes(graph_def: Any, inputs: Sequence[str]) -> None:
    """Import the placeholders named in INPUTS with their shape unknown. RedisAI fed values
    through TensorFlow's C API, which does not hold a value to its placeholder's declared shape
    (a 1x1x28x28 picture fed to an Nx28x28 placeholder that a Reshape follows ran); the Python
    session refuses it before the graph sees it. So a value is judged by the graph's own ops, as
    it was on RedisAI: they run it, or fail with TensorFlow's error."""
    names = {name.split(":")[0] for name in inputs}
    for node in graph_def.node:
        if node.op in _PLACEHOLDERS and node.name in names and "shape" in node.attr:
            shape = node.attr["shape"].shape
            shape.Clear()
            shape.unknown_rank = True


def _graph_tensor(graph: tf.Graph, name: str, kind: str) -> tf.Tensor:
    """``op`` (its output 0, as RedisAI) or ``op:n``; RedisAI's messages when missing."""
    try:
        if ":" in name:
            return graph.get_tensor_by_name(name)
        return graph.get_operation_by_name(name).outputs[0]
    except (KeyError, ValueError, IndexError):
        trailer = "." if kind == "Input" else ""  # RedisAI's two messages differ just so
        raise AIError(f'{kind} node named "{name}" not found in TF graph{trailer}') from None


def _signature_tensors(
    graph: tf.Graph, mapping: Any, wanted: Sequence[str], kind: str, signature: str
) -> list[tf.Tensor]:
    names = list(wanted) or sorted(mapping)
    tensors = []
    for name in names:
        if name not in mapping:
            known = ", ".join(sorted(mapping))
            raise AIError(
                f'{kind} "{name}" not found in the SavedModel signature {signature} '
                f"(it has: {known})"
            )
        tensors.append(graph.get_tensor_by_name(mapping[name].name))
    return tensors


def _saved_model_root(directory: Path) -> Path:
    """The shallowest directory holding ``saved_model.pb`` (zips often wrap a top folder)."""
    found = sorted(directory.rglob("saved_model.pb"), key=lambda p: len(p.parts))
    if not found:
        # not a SavedModel, so a blob RedisAI would have read as a GraphDef (a TorchScript
        # archive is a zip too): RedisAI's answer
        raise AIError("Invalid GraphDef")
    return found[0].parent


def _serving_meta_graph(root: Path) -> Any:
    """The meta graph to load: the serving one, else the first."""
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((root / "saved_model.pb").read_bytes())
    except Exception:  # protobuf raises DecodeError, or worse for garbage
        raise AIError("Invalid SavedModel: saved_model.pb cannot be parsed") from None
    if not saved.meta_graphs:
        raise AIError("Invalid SavedModel: it holds no meta graph")
    for meta_graph in saved.meta_graphs:
        if SERVING_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    return saved.meta_graphs[0]


class TFBackend(Backend):
    name = "TF"
    extra = "tf"
    device_kinds = frozenset({"CPU", "GPU"})
    requires_io_names = True

    @classmethod
    def version(cls) -> str:
        return str(tf.__version__)

    def _session(self, graph: tf.Graph) -> tf.compat.v1.Session:
        config = tf.compat.v1.ConfigProto(
            inter_op_parallelism_threads=self.options.inter_op_parallelism,
            intra_op_parallelism_threads=self.options.intra_op_parallelism,
            # Per-op fallback only (ops with no GPU kernel); a missing GPU is refused before this.
            allow_soft_placement=True,
        )
        return tf.compat.v1.Session(graph=graph, config=config)

    def _check_device(self, device: Device) -> None:
        if device.is_gpu:
            placement.require_gpu(device, "TensorFlow", len(tf.config.list_physical_devices("GPU")))

    def load(self, blob: bytes, spec: ModelSpec) -> LoadedModel:
        self._check_device(spec.device)
        if is_zip(blob):
            return self._load_saved_model(blob, spec)
        return self._load_graph_def(blob, spec)

    def _load_graph_def(self, blob: bytes, spec: ModelSpec) -> LoadedModel:
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(blob)
        except Exception:  # protobuf's DecodeError (or RuntimeWarning-level garbage): TF's text
            raise AIError(BareMessage("Invalid GraphDef")) from None
        safety.check_tf_graph_def(graph_def, self.options.allow_file_ops)
        _relax_input_shapes(graph_def, spec.inputs)
        graph = tf.Graph()
        try:
            with graph.as_default(), tf.device(placement.tf_name(spec.device)):
                tf.graph_util.import_graph_def(graph_def, name="")
        except (ValueError, TypeError, tf.errors.OpError) as exc:
            raise AIError(f"Invalid GraphDef: {one_line(str(exc))}") from None
        inputs = [_graph_tensor(graph, name, "Input") for name in spec.inputs]
        outputs = [_graph_tensor(graph, name, "Output") for name in spec.outputs]
        return TFModel(
            self._session(graph),
            inputs,
            outputs,
            self.options.model_execution_timeout_ms,
            len(blob),
        )

    def _load_saved_model(self, blob: bytes, spec: ModelSpec) -> LoadedModel:
        graph = tf.Graph()
        session = self._session(graph)
        try:
            with tempfile.TemporaryDirectory(prefix="aiworker-savedmodel-") as tmp:
                try:
                    with zipfile.ZipFile(io.BytesIO(blob)) as zipped:
                        limit = self.options.max_model_extract_bytes
                        archive.extract(zipped, Path(tmp), limit, "SavedModel")
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    raise AIError(f"Invalid SavedModel zip archive: {exc}") from None
                root = _saved_model_root(Path(tmp))
                meta_graph_def = _serving_meta_graph(root)
                safety.check_tf_saved_model(meta_graph_def, self.options.allow_file_ops)
                tags = list(meta_graph_def.meta_info_def.tags)
                with graph.as_default(), tf.device(placement.tf_name(spec.device)):
                    try:
                        meta_graph = tf.compat.v1.saved_model.loader.load(session, tags, str(root))
                    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as exc:
                        raise AIError(f"Invalid SavedModel: {one_line(str(exc))}") from None
            signatures = meta_graph.signature_def
            if DEFAULT_SIGNATURE in signatures:
                name = DEFAULT_SIGNATURE
            elif len(signatures) == 1:
                name = next(iter(signatures))
            else:
                known = ", ".join(sorted(signatures)) or "none"
                raise AIError(
                    f"Invalid SavedModel: no {DEFAULT_SIGNATURE} signature (it has: {known})"
                )
            signature = signatures[name]
            inputs = _signature_tensors(graph, signature.inputs, spec.inputs, "Input", name)
            outputs = _signature_tensors(graph, signature.outputs, spec.outputs, "Output", name)
        except BaseException:
            session.close()
            raise
        return TFModel(session, inputs, outputs, self.options.model_execution_timeout_ms, len(blob))
