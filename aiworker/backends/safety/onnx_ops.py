"""ONNX: operator domains that need a custom-op library, and ops that call Python."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from aiworker.backends.safety.refusal import _refuse

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
