"""Models and scripts are code: refuse, at load time, those that touch files or run other code.

Whoever may store a model or script may otherwise act as the worker's OS user: TorchScript has
``torch.from_file`` and ``torch.save``, TensorFlow graphs have ``ReadFile``/``WriteFile`` and
checkpoint ops, ONNX models may name custom-op libraries (native code), TFLite models may carry
Flex (TensorFlow) ops. Unless the operator sets ``allow_file_ops``, each backend calls the check
for its framework here before the framework runs anything, and a refusal names the operation.

Nothing here imports a framework at module level: each check receives the framework's own
objects, or imports what it needs, so the module can be imported by any backend.
"""

from __future__ import annotations

import ast
import contextlib
import io
import tokenize
from collections.abc import Iterable, Iterator
from typing import Any

from aiworker.protocol.errors import AIError

_HINT = (
    "reads or writes files or runs code outside the model, so it is refused; the operator may "
    "allow such models with the allow_file_ops setting (see docs/security.md)"
)


def _refuse(framework: str, what: str) -> AIError:
    return AIError(f"{framework}: {what} {_HINT}")


# --- TensorFlow (GraphDefs, SavedModels, and Flex ops in TFLite) ------------------------------

TF_FILE_OPS = frozenset(
    {
        # files
        "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst", "FileSystemSetConfiguration",
        # checkpoints
        "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice",
        "MergeV2Checkpoints", "LoadAndRemapMatrix", "GenerateVocabRemapping",
        # Python callbacks
        "PyFunc", "PyFuncStateless", "EagerPyFunc",
        # tables and protos read from files
        "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
        "DecodeProtoV2", "EncodeProto",
        # readers and datasets over files, databases or the network
        "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2",
        "TFRecordReader", "TFRecordReaderV2", "FixedLengthRecordReader",
        "FixedLengthRecordReaderV2", "LMDBReader", "RecordInput",
        "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2", "TextLineDataset", "CSVDataset", "CSVDatasetV2",
        "ExperimentalCSVDataset", "SqlDataset", "ExperimentalSqlDataset", "LMDBDataset",
        "ExperimentalLMDBDataset", "MatchingFilesDataset", "ExperimentalMatchingFilesDataset",
        "CacheDataset", "CacheDatasetV2", "SaveDataset", "SaveDatasetV2", "LoadDataset",
        "DistributedSave", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
        "SnapshotDataset", "SnapshotDatasetV2", "SnapshotDatasetReader",
        "SnapshotNestedDatasetReader", "SnapshotChunkDataset", "ListSnapshotChunksDataset",
        "DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3",
        "DataServiceDatasetV4",
        # summaries and debugger dumps
        "CreateSummaryFileWriter", "CreateSummaryDbWriter", "SummaryWriter", "WriteSummary",
        "WriteScalarSummary", "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary",
        "WriteGraphSummary", "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter",
        "CloseSummaryWriter", "StatsAggregatorSetSummaryWriter",
        "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount",
        "DebugNumericSummary", "DebugNumericSummaryV2",
        # remote calls (older TensorFlow)
        "Rpc", "TryRpc",
    }
)  # fmt: skip
# PrintV2 writes to its output_stream, which may be "file://<path>".
_PRINT_STREAMS = frozenset({"", "stderr", "stdout", "log(info)", "log(warning)", "log(error)"})
# What a SavedModel's restore step may use: the loader feeds it the model's own variables path.
_TF_RESTORE_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})
_TF_CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})


def _tf_denied(node: Any) -> bool:
    if node.op in TF_FILE_OPS:
        return True
    if node.op == "PrintV2" and "output_stream" in node.attr:
        return node.attr["output_stream"].s.decode(errors="replace") not in _PRINT_STREAMS
    return False


def _tf_node_error(node: Any, function: str = "") -> AIError:
    where = f" in function {function!r}" if function else ""
    return _refuse("TF", f"operation {node.op!r} (node {node.name!r}{where})")


def _ref_name(ref: str) -> str:
    """Node name of an input reference: ``^ctrl``, ``node``, ``node:1`` or ``node:out:0``."""
    return ref.lstrip("^").split(":", 1)[0]


def _attr_functions(value: Any) -> Iterator[str]:
    if value.HasField("func"):
        yield value.func.name
        for inner in value.func.attr.values():
            yield from _attr_functions(inner)
    if value.HasField("list"):
        for func in value.list.func:
            yield func.name


class _TFGraph:
    """Which nodes and library functions a run of some nodes may execute."""

    def __init__(self, graph_def: Any) -> None:
        self.nodes = {node.name: node for node in graph_def.node}
        self.functions = {f.signature.name: f for f in graph_def.library.function}

    def called(self, node: Any) -> Iterator[str]:
        if node.op in self.functions:
            yield node.op
        for value in node.attr.values():
            yield from _attr_functions(value)

    def closure(self, roots: Iterable[str]) -> tuple[set[str], set[str]]:
        """(top-level nodes, functions) reached from ``roots`` through inputs and calls."""
        nodes: set[str] = set()
        functions: set[str] = set()
        pending = [_ref_name(root) for root in roots]
        called: list[str] = []
        while pending:
            name = pending.pop()
            if name in nodes or name not in self.nodes:
                continue
            nodes.add(name)
            pending.extend(_ref_name(ref) for ref in self.nodes[name].input)
            called.extend(self.called(self.nodes[name]))
        while called:
            name = called.pop()
            if name in functions or name not in self.functions:
                continue
            functions.add(name)
            for node in self.functions[name].node_def:
                called.extend(self.called(node))
        return nodes, functions

    def fed_filename(
        self, ref: str, function: Any, filename: str, callers: list[tuple[Any, Any]], depth: int = 0
    ) -> bool:
        """Whether tensor ``ref`` (in ``function``, or the top-level graph when None) is the file
        name tensor the loader feeds (``filename``), through Identity nodes and function calls.
        Tensors are compared with their output index: the loader feeds one output only."""
        if depth > 16:
            return False
        body = self.nodes if function is None else {n.name: n for n in function.node_def}
        name, output = _split_ref(ref)
        for _ in range(64):  # Identity chains
            node = body.get(name)
            if node is None or node.op != "Identity" or not node.input:
                break
            if output not in ("", "0", "output:0"):
                return False
            name, output = _split_ref(node.input[0])
        if function is None:
            return (name, output or "0") == _split_ref(filename)
        args = [arg.name for arg in function.signature.input_arg]
        if output or name in body or name not in args:
            return False
        index = args.index(name)
        sites = [
            (node, caller)
            for node, caller in callers
            if node.op == function.signature.name
            or (
                node.op in _TF_CALL_OPS
                and "f" in node.attr
                and node.attr["f"].func.name == function.signature.name
            )
        ]
        return bool(sites) and all(
            self.fed_filename(_data_input(node, index), caller, filename, callers, depth + 1)
            for node, caller in sites
        )


def _split_ref(ref: str) -> tuple[str, str]:
    """(node, output) of a data reference: ``node`` -> (node, ""), ``node:1`` -> (node, "1"),
    ``node:out:0`` (inside a function) -> (node, "out:0")."""
    name, _, output = ref.partition(":")
    return name, output


def _data_input(node: Any, index: int) -> str:
    data = [ref for ref in node.input if not ref.startswith("^")]
    return data[index] if index < len(data) else ""


def check_tf_graph_def(graph_def: Any, allow: bool) -> None:
    """Refuse a GraphDef with a file or process operation anywhere, its function library
    included (a frozen graph needs none)."""
    if allow:
        return
    for node in graph_def.node:
        if _tf_denied(node):
            raise _tf_node_error(node)
    for function in graph_def.library.function:
        for node in function.node_def:
            if _tf_denied(node):
                raise _tf_node_error(node, function.signature.name)


# Collections whose op the SavedModel loader runs after restoring variables.
_TF_INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op")


def check_tf_saved_model(meta_graph_def: Any, allow: bool) -> None:
    """Refuse a SavedModel whose signatures or init ops may reach a file or process operation.

    The loader itself runs the saver's restore op, fed with the model's own variables path:
    there, restore ops are accepted when their file name is that fed path, and nothing else from
    the list is. The saver's save op is never run by a worker, so it is not looked at.
    """
    if allow:
        return
    graph = _TFGraph(meta_graph_def.graph_def)
    roots = [
        tensor.name
        for signature in meta_graph_def.signature_def.values()
        for tensors in (signature.inputs, signature.outputs)
        for tensor in tensors.values()
    ]
    for key in _TF_INIT_COLLECTIONS:
        if key in meta_graph_def.collection_def:
            roots.extend(meta_graph_def.collection_def[key].node_list.value)
    strict_nodes, strict_functions = graph.closure(roots)
    _check_tf_region(graph, strict_nodes, strict_functions, lambda node, function: False)

    saver = meta_graph_def.saver_def
    if not saver.restore_op_name:
        return
    nodes, functions = graph.closure([saver.restore_op_name])
    nodes -= strict_nodes
    functions -= strict_functions
    name, output = _split_ref(saver.filename_tensor_name)
    filename = f"{name}:{output or '0'}"
    callers = [(graph.nodes[name], None) for name in nodes] + [
        (node, graph.functions[name])
        for name in functions
        for node in graph.functions[name].node_def
    ]

    def restores_fed_path(node: Any, function: Any) -> bool:
        return (
            node.op in _TF_RESTORE_OPS
            and bool(node.input)
            and graph.fed_filename(node.input[0], function, filename, callers)
        )

    _check_tf_region(graph, nodes, functions, restores_fed_path)


def _check_tf_region(graph: _TFGraph, nodes: set[str], functions: set[str], exempt: Any) -> None:
    for name in sorted(nodes):
        node = graph.nodes[name]
        if _tf_denied(node) and not exempt(node, None):
            raise _tf_node_error(node)
    for name in sorted(functions):
        function = graph.functions[name]
        for node in function.node_def:
            if _tf_denied(node) and not exempt(node, function):
                raise _tf_node_error(node, name)


# --- TorchScript -------------------------------------------------------------------------------

TORCH_FILE_OPS = frozenset({"aten::from_file", "aten::save", "prim::PythonOp"})
# Namespaces whose ops read files or talk to other processes (distributed, shared memory).
TORCH_FILE_NAMESPACES = ("debugprims::", "c10d::", "_c10d_functional", "symm_mem::")
# Names in a TorchScript archive's code that lead to those ops (``save`` only as an attribute).
_TORCH_CODE_NAMES = {
    "from_file": "aten::from_file",
    "load_tensor": "debugprims::load_tensor",
    "debugprims": "debugprims::*",
    "c10d": "c10d::*",
    "_c10d_functional": "_c10d_functional::*",
    "_c10d_functional_autograd": "_c10d_functional_autograd::*",
    "symm_mem": "symm_mem::*",
    "PythonOp": "prim::PythonOp",
}
_MAX_CODE_BYTES = 256 << 20
_SKIPPED_TOKENS = frozenset(
    {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
)


def _torch_denied(kind: str) -> bool:
    return kind in TORCH_FILE_OPS or kind.startswith(TORCH_FILE_NAMESPACES)


def _graph_kinds(graph: Any) -> Iterator[str]:
    for node in graph.nodes():
        yield node.kind()
        for block in node.blocks():
            yield from _graph_kinds(block)
        if node.hasAttribute("Subgraph"):  # prim::fork bodies
            yield from _graph_kinds(node.g("Subgraph"))


def _check_torch_graph(graph: Any, what: str) -> None:
    for kind in _graph_kinds(graph):
        if _torch_denied(kind):
            raise _refuse("TORCH", f"{what} uses {kind!r}, which")


def _code_names(text: str) -> Iterator[str]:
    """Names and string literals (adjacent ones joined, as the compiler joins them) in code;
    ``save`` only where it follows a dot (``torch.save``, ``ops.aten.save``)."""
    previous = ""
    strings: list[str] = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.STRING:
            with contextlib.suppress(ValueError, SyntaxError):
                strings.append(str(ast.literal_eval(token.string)))
            continue
        if strings:
            yield "".join(strings)
            strings = []
        if token.type in _SKIPPED_TOKENS:
            continue
        if token.type == tokenize.NAME and (token.string != "save" or previous == "."):
            yield token.string
        previous = token.string
    if strings:
        yield "".join(strings)


def check_torch_archive(blob: bytes, allow: bool) -> None:
    """Refuse a TorchScript archive whose code names a file or process operation.

    This runs before ``torch.jit.load``, which already executes code: the ``__setstate__``
    methods of the archive's modules and classes. The graphs are checked again after loading
    (``check_torch_module``); this pass reads the code's tokens, so it also catches
    ``getattr(torch, "save")``.
    """
    if allow:
        return
    import torch

    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(blob))  # torch.jit.load's own reader
        records = [name for name in reader.get_all_records() if name.endswith(".py")]
    except Exception:  # not an archive: torch.jit.load reports it in its own words
        return
    if sum(reader.get_record_size(name) for name in records) > _MAX_CODE_BYTES:
        raise AIError(f"TORCH: the model's code is larger than {_MAX_CODE_BYTES:,} bytes")
    for name in records:
        try:
            text = bytes(reader.get_record(name)).decode("utf-8")
            found = [
                word for word in _code_names(text) if word in _TORCH_CODE_NAMES or word == "save"
            ]
        except (UnicodeDecodeError, tokenize.TokenError, SyntaxError):
            raise AIError(f"TORCH: the model's code ({name}) cannot be read") from None
        if found:
            op = _TORCH_CODE_NAMES.get(found[0], "aten::save")
            raise _refuse("TORCH", f"the model's code ({name}) uses {op!r}, which")


def _methods(module: Any) -> Iterator[tuple[str, Any]]:
    for name in module._c._method_names():
        yield name, module._c._get_method(name)
    for hook in [*module._c._get_forward_pre_hooks(), *module._c._get_forward_hooks()]:
        yield getattr(hook, "name", "hook"), hook


def check_torch_module(module: Any, allow: bool) -> None:
    """Refuse a loaded TorchScript module whose methods (every submodule's, hooks included, with
    the functions and methods they call inlined) use a file or process operation."""
    if allow:
        return
    for submodule in module.modules():
        for name, method in _methods(submodule):
            graph = getattr(method, "inlined_graph", None) or method.graph
            _check_torch_graph(graph, f"method {name!r} of {submodule.original_name!r}")


def check_torch_script(unit: Any, allow: bool) -> None:
    """Refuse a compiled script (a CompilationUnit) whose functions use a file or process
    operation, in themselves or in what they call."""
    if allow:
        return
    for function in unit.get_functions():
        _check_torch_graph(function.inlined_graph, f"function {function.name!r}")


# --- ONNX --------------------------------------------------------------------------------------

# Operator domains onnxruntime implements itself; any other needs a custom-op library.
ONNX_DOMAINS = frozenset(
    {
        "",
        "ai.onnx",
        "ai.onnx.ml",
        "ai.onnx.training",
        "ai.onnx.preview.training",
        "com.microsoft",
        "com.microsoft.nchwc",
        "com.microsoft.experimental",
    }
)
# Contrib ops that call into Python or PyTorch (training builds of onnxruntime).
ONNX_DENIED = frozenset({("com.microsoft", "ATen"), ("com.microsoft", "PythonOp"),
                         ("com.microsoft", "PythonOpGrad")})  # fmt: skip


def _onnx_nodes(nodes: Iterable[Any]) -> Iterator[Any]:
    for node in nodes:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _onnx_nodes(attribute.g.node)
            for graph in attribute.graphs:
                yield from _onnx_nodes(graph.node)


def check_onnx(model: Any, allow: bool) -> None:
    """Refuse operator domains onnxruntime does not implement (they would need a custom-op
    library: native code; a worker never registers one) and contrib ops that call Python."""
    if allow:
        return
    local = {(f.domain, f.name) for f in model.functions}  # model-local functions: plain ONNX
    local_domains = {domain for domain, _ in local}
    opsets = [*model.opset_import, *(o for f in model.functions for o in f.opset_import)]
    for opset in opsets:
        if opset.domain not in ONNX_DOMAINS and opset.domain not in local_domains:
            raise _refuse(
                "ONNX",
                f"opset domain {opset.domain!r} needs a custom-op library (native code), which",
            )
    nodes = _onnx_nodes([*model.graph.node, *(n for f in model.functions for n in f.node)])
    for node in nodes:
        key = (node.domain, node.op_type)
        if key in ONNX_DENIED or (node.domain not in ONNX_DOMAINS and key not in local):
            raise _refuse(
                "ONNX", f"operator {node.op_type!r} of domain {node.domain!r} (node {node.name!r})"
            )


# --- TFLite ------------------------------------------------------------------------------------


def _tflite_schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated  # type: ignore[no-redef]
    return schema_py_generated


def _proto_string(data: bytes, number: int) -> str | None:
    """The last value of string field ``number`` in a serialized protobuf message (a NodeDef's
    ``op`` is field 2), read without TensorFlow; None when absent or malformed."""

    def varint(at: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[at]
            value |= (byte & 0x7F) << shift
            at += 1
            if byte < 0x80:
                return value, at
            shift += 7

    found: str | None = None
    at = 0
    try:
        while at < len(data):
            key, at = varint(at)
            wire = key & 7
            if wire == 0:
                _, at = varint(at)
            elif wire == 1:
                at += 8
            elif wire == 5:
                at += 4
            elif wire == 2:
                length, at = varint(at)
                if key >> 3 == number:
                    found = data[at : at + length].decode("utf-8", "replace")
                at += length
            else:
                return None
    except IndexError:
        return None
    return found


def _flex_ops(custom_options: bytes) -> list[str]:
    """The TensorFlow op names a Flex op's options name (the op and its NodeDef's op)."""
    from flatbuffers import flexbuffers

    entries = flexbuffers.GetRoot(custom_options).AsVector
    node_def = _proto_string(bytes(entries[1].AsStringBytes), 2)
    return [entries[0].AsString, node_def or ""]


def check_tflite(blob: bytes, allow: bool) -> bool:
    """Refuse TFLite models with custom ops named like TensorFlow file ops, and Flex ops (which
    run TensorFlow kernels) whose TensorFlow op is one, or cannot be read. False when the blob
    cannot be read as a TFLite model at all (the caller refuses it: nothing was checked)."""
    if allow:
        return True
    schema = _tflite_schema()
    try:
        model = schema.Model.GetRootAs(blob, 0)
        # Every vector lies inside the buffer: a longer one is garbage, not a slow loop.
        if max(model.OperatorCodesLength(), model.SubgraphsLength()) > len(blob) // 4:
            return False
        codes = []
        for index in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(index)
            builtin = max(code.DeprecatedBuiltinCode(), code.BuiltinCode())
            custom = code.CustomCode() if builtin == schema.BuiltinOperator.CUSTOM else None
            codes.append(custom.decode("utf-8", "replace") if custom is not None else "")
        uses = []
        for index in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(index)
            if subgraph.OperatorsLength() > len(blob) // 4:
                return False
            for position in range(subgraph.OperatorsLength()):
                operator = subgraph.Operators(position)
                uses.append((codes[operator.OpcodeIndex()], operator))
    except Exception:  # not a TFLite flatbuffer
        return False
    for name in codes:
        if name in TF_FILE_OPS:
            raise _refuse("TFLITE", f"custom op {name!r}")
    for name, op in uses:
        if not name.startswith("Flex"):
            continue
        try:  # the op the Flex delegate would run comes from the options, not from the name
            named = [name.removeprefix("Flex"), *_flex_ops(op.CustomOptionsAsNumpy().tobytes())]
        except Exception:
            raise _refuse(
                "TFLITE", f"Flex op {name!r} (its TensorFlow op cannot be read)"
            ) from None
        for tf_op in named:
            if tf_op in TF_FILE_OPS:
                raise _refuse("TFLITE", f"Flex op {name!r} (TensorFlow op {tf_op!r})")
    return True
