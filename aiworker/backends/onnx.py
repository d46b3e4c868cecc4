"""ONNX backend: onnxruntime sessions built from the blob's bytes (no temporary files).

- ONNX-ML models (scikit-learn through skl2onnx, ...) return non-tensor outputs: a classifier's
  probabilities come back as a sequence of {label: probability} maps. Those become tensors here
  (one row per sample, one column per label in label order) instead of being dropped, as RedisAI
  did; a single map becomes a 1-D tensor, a sequence of equal-shaped tensors a stacked one.
- Models whose initializers live in external data files are refused before onnxruntime sees them:
  loaded from bytes, it would look for those files relative to the worker's working directory.
- INTER_OP/INTRA_OP_PARALLELISM set the session's thread pools, MODEL_EXECUTION_TIMEOUT terminates a
  run through ``RunOptions.terminate`` (RedisAI's kill switch), BACKEND_MEMORY_LIMIT caps the CPU
  arena every session of the worker allocates from.
- Host memory: numeric inputs reach onnxruntime as the numpy arrays they are (no copy here). On
  the CUDA provider ``session.run`` copies each input to the device and each output back itself,
  from and to pageable memory; ``host_buffer`` is the plain default.
  Binding page-locked buffers (IOBinding over ``cuda_pinned`` OrtValues) would save that staging;
  it is not done, as it could not be tested without a GPU.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from aiworker.backends import safety
from aiworker.backends.base import Backend, BackendOptions, LoadedModel, ModelSpec
from aiworker.backends.util import as_array, numpy_dtype, one_line
from aiworker.devices import discovery, placement
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, BareMessage, CountMismatch, RunTimedOut
from aiworker.protocol.requests import IONames

try:
    import onnx
    import onnxruntime as ort
except ImportError as exc:  # the registry turns this into a hint naming the extra
    raise ImportError(f"onnxruntime or onnx is not installed: {exc}") from exc

EXTERNAL_DATA = (
    "ONNX models with external data (initializers stored in separate files) are not supported: "
    "store a self-contained model (onnx.save_model(model, path, save_as_external_data=False))"
)
TERMINATED = "Exiting due to terminate flag being set to true"
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE_LOCATION = re.compile(r"/\S+\.(?:cc|h|cpp):\d+ [^()]*\([^()]*\)\s*")
_ELEMENT_TYPE = re.compile(r"tensor\((\w+)\)\)*$")


def ort_error_text(exc: BaseException) -> str:
    """onnxruntime's message as RedisAI's clients saw it: no Python status prefix, no C++ source
    location, one line, no error code (a ``BareMessage``)."""
    text = _ORT_PREFIX.sub("", str(exc).strip())
    return BareMessage(one_line(_SOURCE_LOCATION.sub("", text)))


def _node_tensors(nodes: Any) -> Iterator[Any]:
    """TensorProtos held by node attributes, subgraphs (If/Loop bodies) included."""
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def check_self_contained(blob: bytes) -> Any:
    """Refuse models with external data; returns the parsed model. A blob that is not an ONNX
    model (None) is left to onnxruntime, whose message RedisAI passed on."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(blob)
    except Exception:  # protobuf's DecodeError: onnxruntime reports it in its own words
        return None
    tensors = itertools.chain(
        _graph_tensors(model.graph), *(_node_tensors(f.node) for f in model.functions)
    )
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise AIError(EXTERNAL_DATA)
    return model


def _element_dtype(type_name: str) -> Any:
    match = _ELEMENT_TYPE.search(type_name)
    return numpy_dtype(match.group(1)) if match else None


def to_tensor(value: Any, type_name: str) -> np.ndarray:
    """An onnxruntime output as a tensor; ONNX-ML maps and sequences are converted, not dropped."""
    if isinstance(value, np.ndarray):
        return value
    if value is None:  # an optional output holding nothing: there is no tensor to store
        raise AIError(f"ONNX: output of type {type_name} holds no value")
    dtype = _element_dtype(type_name)
    if isinstance(value, dict):
        return np.asarray(list(value.values()), dtype=dtype)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        labels = list(value[0])
        if any(list(row) != labels for row in value):
            raise AIError(f"ONNX: output of type {type_name} has rows with different labels")
        return np.asarray([list(row.values()) for row in value], dtype=dtype)
    if isinstance(value, list) and all(isinstance(v, np.ndarray) for v in value):
        if not value:
            return np.zeros((0,), dtype=dtype or np.float32)
        if len({v.shape for v in value}) != 1:
            raise AIError(f"ONNX: output of type {type_name} holds tensors of different shapes")
        return np.stack(value)
    return as_array(value)


def _feed(value: np.ndarray) -> np.ndarray:
    """STRING tensors hold bytes; onnxruntime wants str elements."""
    if value.dtype != object:
        return value
    texts = [
        v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)
        for v in value.reshape(-1)
    ]
    converted = np.empty(len(texts), dtype=object)
    converted[:] = texts
    return converted.reshape(value.shape)


class ONNXModel(LoadedModel):
    def __init__(self, session: Any, options: BackendOptions, nbytes: int) -> None:
        self.session = session
        self.options = options
        self.nbytes = nbytes
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.output_types = [o.type for o in session.get_outputs()]

    def io_names(self) -> IONames:
        return tuple(self.input_names), tuple(self.output_names)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise CountMismatch(messages.MODEL_INPUT_COUNT)
        feed = {
            name: _feed(np.asarray(value))
            for name, value in zip(self.input_names, inputs, strict=True)
        }
        run_options = ort.RunOptions()
        limit_ms = self.options.model_execution_timeout_ms
        timer = None
        if limit_ms > 0:
            # RedisAI's kill switch: the run stops at its next node once the flag is set.
            timer = threading.Timer(limit_ms / 1000, setattr, (run_options, "terminate", True))
            timer.daemon = True
            timer.start()
        try:
            results = self.session.run(None, feed, run_options)
        except Exception as exc:  # onnxruntime's pybind errors (Fail, InvalidArgument, ...)
            text = self._error(exc, limit_ms)
            raise (RunTimedOut if text.startswith(TERMINATED) else AIError)(text) from None
        finally:
            if timer is not None:
                timer.cancel()
        return [to_tensor(v, t) for v, t in zip(results, self.output_types, strict=True)]

    def _error(self, exc: BaseException, limit_ms: int) -> str:
        text = ort_error_text(exc)
        if TERMINATED in text:
            return f"{TERMINATED}: MODEL_EXECUTION_TIMEOUT ({limit_ms} ms) exceeded"
        limit_mb = self.options.backend_memory_limit_mb
        if limit_mb and "Available memory of" in text:
            return f"BACKEND_MEMORY_LIMIT ({limit_mb} MB) exceeded: {text}"
        return text


class ONNXBackend(Backend):
    name = "ONNX"
    extra = "onnx"
    device_kinds = frozenset({"CPU", "GPU"})

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        ort.set_default_logger_severity(4)  # failures reach the requester in the reply instead
        if options.backend_memory_limit_mb > 0:
            # One CPU arena with a ceiling, shared by every session of this worker process (they
            # opt in with session.use_env_allocators), as RedisAI capped its ONNX allocator.
            memory = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            arena = ort.OrtArenaCfg(
                {"max_mem": options.backend_memory_limit_mb << 20, "arena_extend_strategy": 1}
            )
            ort.create_and_register_allocator(memory, arena)

    @classmethod
    def version(cls) -> str:
        return str(ort.__version__)

    def session_options(self) -> Any:
        """SessionOptions with this worker's thread pools and memory limit."""
        so = ort.SessionOptions()
        so.log_severity_level = 4
        if self.options.intra_op_parallelism:
            so.intra_op_num_threads = self.options.intra_op_parallelism
        if self.options.inter_op_parallelism:
            so.inter_op_num_threads = self.options.inter_op_parallelism
            if (
                self.options.inter_op_parallelism > 1
            ):  # the inter-op pool runs in parallel mode only
                so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        if self.options.backend_memory_limit_mb > 0:
            so.add_session_config_entry("session.use_env_allocators", "1")
        return so

    def load(self, blob: bytes, spec: ModelSpec) -> LoadedModel:
        device = spec.device
        if device.is_gpu:
            placement.require_gpu(device, "onnxruntime", discovery.gpu_count("onnx"))
        model = check_self_contained(blob)
        if model is not None:  # no custom-op library is ever registered: refuse what needs one
            safety.check_onnx(model, self.options.allow_file_ops)
        try:
            session = ort.InferenceSession(
                blob, self.session_options(), providers=placement.onnx_providers(device)
            )
        except Exception as exc:  # onnxruntime's pybind errors
            raise AIError(ort_error_text(exc)) from None
        if device.is_gpu and "CUDAExecutionProvider" not in session.get_providers():
            # onnxruntime falls back to the CPU when CUDA fails to start: refuse instead.
            raise placement.unavailable(device, "onnxruntime", 0)
        return ONNXModel(session, self.options, len(blob))
