"""TFLite: custom and Flex ops that do what TensorFlow's file ops do."""

from __future__ import annotations

from typing import Any

from aiworker.backends.safety.refusal import _refuse
from aiworker.backends.safety.tf_ops import TF_FILE_OPS

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
