"""TorchScript: file and process ops in archives (before loading), modules and scripts."""

from __future__ import annotations

import ast
import contextlib
import io
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

from aiworker.backends import archive
from aiworker.backends.safety.refusal import _refuse
from aiworker.protocol.errors import AIError

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
_LOAD_FAILED = "Failed to load TorchScript model"  # RedisAI's words for a blob it cannot load
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


def _code_members(blob: bytes) -> Iterator[tuple[str, str]]:
    """(record name, text) of each code record in a TorchScript archive, read with zipfile
    within ``_MAX_CODE_BYTES``. Every member named ``*.py`` counts: duplicates included, as
    torch's reader may pick any of them."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zipped:
            if not archive.directory_where_recorded(blob):
                raise AIError(f"{_LOAD_FAILED}: the zip archive has bytes before or after it")
            code = [info for info in zipped.infolist() if info.filename.endswith(".py")]
            if sum(info.file_size for info in code) > _MAX_CODE_BYTES:
                raise AIError(f"TORCH: the model's code is larger than {_MAX_CODE_BYTES:,} bytes")
            for info in code:
                name = info.filename.split("/", 1)[-1]  # as torch names it: below the top folder
                try:
                    text = archive.read_member(zipped, info, "TorchScript").decode("utf-8")
                except UnicodeDecodeError:
                    raise AIError(f"TORCH: the model's code ({name}) cannot be read") from None
                yield name, text
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError) as exc:  # fmt: skip
        # not a readable zip archive, or an encrypted one: nothing torch.jit.save wrote
        raise AIError(f"{_LOAD_FAILED}: not a TorchScript zip archive ({exc})") from None


def check_torch_archive(blob: bytes, allow: bool) -> None:
    """Refuse a TorchScript archive whose code names a file or process operation.

    This runs before ``torch.jit.load``, which already executes code: the ``__setstate__``
    methods of the archive's modules and classes. The graphs are checked again after loading
    (``check_torch_module``); this pass reads the code's tokens, so it also catches
    ``getattr(torch, "save")``. The archive is read with zipfile (torch's own reader is
    private), so only archives both read alike pass (``archive.directory_where_recorded``), and
    a blob that is no zip archive at all is refused: it is none that torch.jit.save writes.
    """
    if allow:
        return
    for name, text in _code_members(blob):
        try:
            found = [
                word for word in _code_names(text) if word in _TORCH_CODE_NAMES or word == "save"
            ]
        except (tokenize.TokenError, SyntaxError):
            raise AIError(f"TORCH: the model's code ({name}) cannot be read") from None
        if found:
            op = _TORCH_CODE_NAMES.get(found[0], "aten::save")
            raise _refuse("TORCH", f"the model's code ({name}) uses {op!r}, which")


def _methods(module: Any) -> Iterator[tuple[str, Any]]:
    # torch has no public way to list a loaded module's methods and hooks (a ScriptModule finds
    # them by name in ``__getattr__`` only), so these read its C++ module (``_c``); the code scan
    # above needs no private API.
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
