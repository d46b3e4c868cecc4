"""TorchScript: file and process ops in archives (before loading), modules and scripts."""

from __future__ import annotations

import ast
import contextlib
import io
import re
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
# A TorchScript archive holds a record per tensor and code file: far more than a SavedModel.
_MAX_RECORDS = 1_000_000
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


# How far TorchScript's compiler may be made to recurse. Its parser and emitter recurse once per
# nesting level, per operator of an expression chain (``a + a + ...``, ``x.f().f()...``) and per
# ``elif`` of one ``if``; a few thousand of any overflow a 2 MiB thread stack and kill the
# process (a segfault: the worker, then the next one that takes the entry). Code people or
# torch.jit.save write stays far below these. All of them at once must fit a 2 MiB stack on
# every torch release supported: a binary operator costs torch 2.1 about 1.4 KiB of stack (1,450
# fill 2 MiB), torch 2.13 about 0.9 KiB (2,300), so MAX_CHAIN is sized for 2.1 (at 1,000 the
# limits together overflowed 2 MiB there).
MAX_NESTING = 100  # brackets open at once, or indented blocks
MAX_CHAIN = 700  # operators in one statement
MAX_ELIFS = 200  # elif branches of one if
_NOT_CHAINING = frozenset({",", ";", ":", ")", "]", "}", "="})
_KEYWORD_OPERATORS = frozenset({"and", "or", "not", "in", "is", "if", "else", "lambda"})


def check_code_shape(text: str, what: str) -> None:
    """Refuse TorchScript code (a script's source, an archive's code) that nests, chains or
    branches further than the compiler can take (see MAX_NESTING), before it is compiled. Code
    that Python's tokenizer cannot read has broken syntax, which the compiler reports in its
    own words: it is measured on its characters instead (``_check_characters``)."""
    try:
        for _token in _shaped_tokens(text, what):
            pass
    except _Unreadable:
        _check_characters(text, what)


class _Unreadable(AIError):
    """Python's tokenizer cannot read the code."""


def _shaped_tokens(text: str, what: str) -> Iterator[tokenize.TokenInfo]:
    """The code's tokens, refusing (AIError) code past MAX_NESTING, MAX_CHAIN or MAX_ELIFS, and
    code that Python's tokenizer cannot read (``_Unreadable``; the compiler's syntax is
    Python's)."""
    brackets = indent = chain = 0
    elifs: dict[int, int] = {}  # indentation -> elifs of the if at that indentation
    line_start = True
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            kind, string = token.type, token.string
            if kind == tokenize.INDENT:
                indent += 1
                _within(indent, MAX_NESTING, "nests blocks", what, token)
            elif kind == tokenize.DEDENT:
                indent -= 1
            elif kind == tokenize.NEWLINE:
                chain, line_start = 0, True
            elif kind == tokenize.OP or (kind == tokenize.NAME and string in _KEYWORD_OPERATORS):
                if string in "([{":
                    brackets += 1
                    _within(brackets, MAX_NESTING, "nests brackets", what, token)
                elif string in ")]}":
                    brackets -= 1
                if string not in _NOT_CHAINING:
                    chain += 1
                    _within(chain, MAX_CHAIN, "chains operators in one statement", what, token)
            if line_start and kind == tokenize.NAME:
                if string == "if":
                    elifs[indent] = 0
                elif string == "elif":
                    elifs[indent] = elifs.get(indent, 0) + 1
                    _within(elifs[indent], MAX_ELIFS, "has elif branches", what, token)
            if kind not in _LINE_PREFIX:
                line_start = kind == tokenize.NEWLINE
            yield token
    except (tokenize.TokenError, SyntaxError) as exc:
        raise _Unreadable(f"TORCH: {what} cannot be read: {exc}") from None


# What may chain in a statement, counted on characters: operator characters, opening brackets,
# the operators that are words.
_CHAINING = re.compile(r"[-+*/%@&|^~<>=!.(\[{]|\b(?:and|or|not|in|is|if|else|lambda)\b")


def _check_characters(text: str, what: str) -> None:
    """MAX_NESTING, MAX_CHAIN and MAX_ELIFS, counted on the characters of code that cannot be
    tokenized, never more leniently than on its tokens: brackets and operators in strings and
    comments count too, and a statement ends only at a line end outside every bracket."""
    brackets = chain = elifs = 0
    indents = [0]  # the indentation of the blocks open
    for row, line in enumerate(text.split("\n"), start=1):
        stripped = line.lstrip()
        if stripped and brackets == 0:
            width = len(line) - len(stripped)
            while width < indents[-1]:
                indents.pop()
            if width > indents[-1]:
                indents.append(width)
            if len(indents) - 1 > MAX_NESTING:
                raise _refused(what, "nests blocks", MAX_NESTING, row)
            elifs = elifs + 1 if stripped.startswith("elif") else elifs
            if elifs > MAX_ELIFS:
                raise _refused(what, "has elif branches", MAX_ELIFS, row)
        for char in line:
            if char in "([{":
                brackets += 1
                if brackets > MAX_NESTING:
                    raise _refused(what, "nests brackets", MAX_NESTING, row)
            elif char in ")]}":
                brackets = max(0, brackets - 1)
        chain += len(_CHAINING.findall(line))
        if chain > MAX_CHAIN:
            raise _refused(what, "chains operators in one statement", MAX_CHAIN, row)
        if brackets == 0 and not line.endswith("\\"):
            chain = 0


# Tokens that may come before a logical line's first word.
_LINE_PREFIX = frozenset({tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.COMMENT})


def _within(count: int, limit: int, does: str, what: str, token: tokenize.TokenInfo) -> None:
    if count > limit:
        raise _refused(what, does, limit, token.start[0])


def _refused(what: str, does: str, limit: int, row: int) -> AIError:
    return AIError(
        f"TORCH: {what} {does} past {limit:,} (line {row}), deeper than aiworker lets "
        "TorchScript's compiler go"
    )


def _code_names(text: str, what: str) -> Iterator[str]:
    """Names and string literals (adjacent ones joined, as the compiler joins them) in code;
    ``save`` only where it follows a dot (``torch.save``, ``ops.aten.save``)."""
    previous = ""
    strings: list[str] = []
    for token in _shaped_tokens(text, what):
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


def _code_members(blob: bytes, max_bytes: int) -> Iterator[tuple[str, str]]:
    """(record name, text) of each code record in a TorchScript archive, read with zipfile
    within ``_MAX_CODE_BYTES``, once the whole archive's declared size passed ``max_bytes``
    (torch inflates a record to its declared size: a 2 MB blob declaring 2 GiB took that much).
    Every member named ``*.py`` counts: duplicates included, as torch's reader may pick any of
    them."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zipped:
            if not archive.directory_where_recorded(blob):
                raise AIError(f"{_LOAD_FAILED}: the zip archive has bytes before or after it")
            archive.check_members(zipped, max_bytes, "TorchScript model", _MAX_RECORDS)
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


def check_torch_archive(blob: bytes, allow: bool, max_bytes: int = 0) -> None:
    """Refuse a TorchScript archive whose code names a file or process operation.

    This runs before ``torch.jit.load``, which already executes code: the ``__setstate__``
    methods of the archive's modules and classes. The graphs are checked again after loading
    (``check_torch_module``); this pass reads the code's tokens, so it also catches
    ``getattr(torch, "save")``. The archive is read with zipfile (torch's own reader is
    private), so only archives both read alike pass (``archive.directory_where_recorded``), and
    a blob that is no zip archive at all is refused: it is none that torch.jit.save writes.
    Whatever ``allow`` says, code that would overflow the compiler's stack is refused
    (``check_code_shape``). ``max_bytes``: what the archive may unpack to (0: no bound).
    """
    for name, text in _code_members(blob, max_bytes):
        what = f"the model's code ({name})"
        if allow:
            check_code_shape(text, what)
            continue
        found = [
            word for word in _code_names(text, what) if word in _TORCH_CODE_NAMES or word == "save"
        ]
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
