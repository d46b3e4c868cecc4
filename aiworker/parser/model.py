"""AI.MODELSTORE, the deprecated AI.MODELSET, AI.MODELGET, AI.MODELDEL and AI._MODELSCAN."""

from __future__ import annotations

from collections.abc import Sequence

from aiworker.devices import parse_device
from aiworker.parser.commands import ModelDel, ModelGet, ModelScan, ModelStore
from aiworker.parser.common import is_word, parse_unsigned, wrong_arity
from aiworker.parser.lexer import to_bytes
from aiworker.protocol import messages
from aiworker.protocol.backend_names import io_name_backends, known_backends
from aiworker.protocol.errors import AIError

# MODELSET refused these as device names (its arguments had no fixed positions).
_MODELSET_KEYWORDS = {
    "INPUTS",
    "OUTPUTS",
    "TAG",
    "BATCHSIZE",
    "MINBATCHSIZE",
    "MINBATCHTIMEOUT",
    "BLOB",
}


def _backend(name: str) -> str:
    upper = name.upper()
    if upper not in known_backends():
        raise AIError(messages.MODEL_UNSUPPORTED_BACKEND)
    return upper


class _Cursor:
    """Walks optional ``KEYWORD value`` pairs in order, as RedisAI's ArgsCursor does."""

    def __init__(self, args: Sequence[str], start: int) -> None:
        self.args = args
        self.i = start

    def at_end(self) -> bool:
        return self.i >= len(self.args)

    def take_if(self, word: str) -> bool:
        if not self.at_end() and is_word(self.args[self.i], word):
            self.i += 1
            return True
        return False

    def value(self, message: str) -> str:
        if self.at_end():
            raise AIError(message)
        self.i += 1
        return self.args[self.i - 1]


def _blob(cursor: _Cursor) -> bytes:
    """The chunks after BLOB, concatenated (a large model may be sent in several arguments)."""
    if cursor.at_end():
        raise AIError(messages.MODEL_NO_BLOB)
    return b"".join(to_bytes(chunk) for chunk in cursor.args[cursor.i :])


def parse_modelstore(args: Sequence[str]) -> ModelStore:
    """``AI.MODELSTORE key backend device [TAG t] [BATCHSIZE n [MINBATCHSIZE m
    [MINBATCHTIMEOUT ms]]] [INPUTS n name... OUTPUTS n name...] BLOB data...``."""
    if len(args) < 5:
        raise wrong_arity("AI.MODELSTORE")
    key, backend = args[0], _backend(args[1])
    device = parse_device(args[2]).name
    cursor = _Cursor(args, 3)
    tag = cursor.value(messages.MODEL_NO_BLOB) if cursor.take_if("TAG") else ""
    batch = minbatch = mintimeout = 0
    if cursor.take_if("BATCHSIZE"):
        batch = parse_unsigned(
            cursor.value(messages.MODEL_BAD_BATCHSIZE), messages.MODEL_BAD_BATCHSIZE
        )
    if cursor.take_if("MINBATCHSIZE"):
        bad = messages.MODEL_BAD_MINBATCHSIZE
        minbatch = parse_unsigned(cursor.value(bad), bad)
        if minbatch and not batch:
            raise AIError(messages.MODEL_MINBATCH_NEEDS_BATCH)
    if cursor.take_if("MINBATCHTIMEOUT"):
        bad = messages.MODEL_BAD_MINBATCHTIMEOUT
        mintimeout = parse_unsigned(cursor.value(bad), bad)
        if mintimeout and not minbatch:
            raise AIError(messages.MODEL_MINBATCHTIMEOUT_NEEDS_MINBATCH)
    if cursor.at_end():
        raise AIError(messages.MODEL_NO_BLOB)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    if backend in io_name_backends():
        if not cursor.take_if("INPUTS"):
            raise AIError(messages.MODEL_TF_INPUTS_REQUIRED)
        inputs = _counted_names(cursor, "input")
        if not cursor.take_if("OUTPUTS"):
            raise AIError(messages.MODEL_TF_OUTPUTS_REQUIRED)
        outputs = _counted_names(cursor, "output")
    elif cursor.take_if("INPUTS"):
        raise AIError(messages.MODEL_IO_NOT_TF)
    if not cursor.take_if("BLOB"):
        raise AIError("Invalid argument, expected BLOB")
    return ModelStore(
        key,
        backend,
        device,
        _blob(cursor),
        tag=tag,
        batchsize=batch,
        minbatchsize=minbatch,
        minbatchtimeout=mintimeout,
        inputs=inputs,
        outputs=outputs,
    )


def _counted_names(cursor: _Cursor, what: str) -> tuple[str, ...]:
    """``n name...`` after INPUTS/OUTPUTS of a TF model."""
    bad = f"Invalid argument for {what}_count"
    count = parse_unsigned(cursor.value(bad), bad)
    if count == 0:
        raise AIError(bad)
    names = tuple(cursor.args[cursor.i : cursor.i + count])
    if len(names) < count:
        raise AIError(f"number of model {what}s does not match the number of given arguments")
    cursor.i += count
    return names


def parse_modelset(args: Sequence[str]) -> ModelStore:
    """Deprecated ``AI.MODELSET key backend device [TAG t] [BATCHSIZE n [MINBATCHSIZE m
    [MINBATCHTIMEOUT ms]]] [INPUTS name... OUTPUTS name...] BLOB data``."""
    if len(args) < 3:
        raise wrong_arity("AI.MODELSET")
    key, backend = args[0], _backend(args[1])
    if len(args[2]) > 10 or args[2].upper() in _MODELSET_KEYWORDS:
        raise AIError(messages.INVALID_DEVICE)
    device = parse_device(args[2]).name
    cursor = _Cursor(args, 3)
    tag = cursor.value(messages.MODEL_NO_BLOB) if cursor.take_if("TAG") else ""
    batch = minbatch = mintimeout = 0
    if cursor.take_if("BATCHSIZE"):
        if backend == "TFLITE":
            raise AIError("Auto-batching not supported by the TFLITE backend")
        batch = parse_unsigned(
            cursor.value(messages.MODEL_BAD_BATCHSIZE), messages.MODEL_BAD_BATCHSIZE
        )
    if cursor.take_if("MINBATCHSIZE"):
        if not batch:
            raise AIError(messages.MODEL_MINBATCH_NEEDS_BATCH)
        bad = messages.MODEL_BAD_MINBATCHSIZE
        minbatch = parse_unsigned(cursor.value(bad), bad)
    if cursor.take_if("MINBATCHTIMEOUT"):
        if not batch:
            raise AIError("MINBATCHTIMEOUT specified without BATCHSIZE")
        if not minbatch:
            raise AIError(messages.MODEL_MINBATCHTIMEOUT_NEEDS_MINBATCH)
        bad = messages.MODEL_BAD_MINBATCHTIMEOUT
        mintimeout = parse_unsigned(cursor.value(bad), bad)
    if cursor.at_end():
        raise AIError(messages.MODEL_NO_BLOB)
    rest = list(args[cursor.i :])
    blob_at = next((n for n, token in enumerate(rest) if is_word(token, "BLOB")), len(rest))
    options = rest[:blob_at]
    inputs: list[str] = []
    outputs: list[str] = []
    if backend in io_name_backends():
        if not options:
            raise AIError("Insufficient arguments, INPUTS and OUTPUTS not specified")
        if not is_word(options[0], "INPUTS"):
            raise AIError("INPUTS not specified")
        out_at = next((n for n, t in enumerate(options) if is_word(t, "OUTPUTS")), None)
        if out_at is None:
            raise AIError("OUTPUTS not specified")
        inputs, outputs = options[1:out_at], options[out_at + 1 :]
    # other backends: RedisAI ignored INPUTS/OUTPUTS here
    if blob_at + 1 >= len(rest):
        raise AIError(messages.MODEL_NO_BLOB)
    blob = b"".join(to_bytes(chunk) for chunk in rest[blob_at + 1 :])
    return ModelStore(
        key,
        backend,
        device,
        blob,
        tag=tag,
        batchsize=batch,
        minbatchsize=minbatch,
        minbatchtimeout=mintimeout,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        deprecated=True,
    )


def parse_modelget(args: Sequence[str]) -> ModelGet:
    """``AI.MODELGET key [META] [BLOB]``: META alone is META only, BLOB alone the blob only,
    neither or both META and BLOB; other arguments are ignored, as RedisAI did."""
    if not 1 <= len(args) <= 3:
        raise wrong_arity("AI.MODELGET")
    words = {a.upper() for a in args[1:]}
    meta, blob = "META" in words, "BLOB" in words
    if not meta and not blob:
        meta = blob = True
    return ModelGet(args[0], meta=meta, blob=blob)


def parse_modeldel(args: Sequence[str]) -> ModelDel:
    if len(args) != 1:
        raise wrong_arity("AI.MODELDEL")
    return ModelDel(args[0])


def parse_modelscan(args: Sequence[str]) -> ModelScan:
    if args:
        raise wrong_arity("AI._MODELSCAN")
    return ModelScan()
