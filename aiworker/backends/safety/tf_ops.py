"""TensorFlow: file, checkpoint and Python-callback ops in GraphDefs and SavedModels."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from aiworker.backends.safety.refusal import _refuse
from aiworker.protocol.errors import AIError

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
