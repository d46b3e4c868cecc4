"""redisai-py's command building: the RedisAI command each client method stands for, and the checks
redisai-py 1.3 ran before sending anything (its ``ValueError``/``TypeError`` types and messages,
word for word). Pure code.

The tokens are what ``debug=True`` prints and what RedisAI's parser (``aiworker.parser``) turns
into requests, so server-side errors keep RedisAI's messages too. Where redisai-py refused input
that RedisAI itself accepts (RedisAI type names such as ``"FLOAT"``, numpy dtype objects,
big-endian arrays, ``CPU:1`` for scripts, backends from plugins, a zipped TF SavedModel without
INPUTS/OUTPUTS), aiworker accepts it; README's "Moving from RedisAI" lists these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aiworker.protocol import messages
from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError
from aiworker.protocol.text import strict_text

# redisai-py's dtype spellings for list/tuple values (``dtype.lower()`` is looked up here).
DTYPES: dict[str, str] = {
    "float": "FLOAT",
    "double": "DOUBLE",
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
    "str": "STRING",
}
ALLOWED_DEVICES = {"CPU", "GPU"}
REDISAI_CHUNK = 500 * 1024 * 1024  # redisai-py's fixed chunk size for the deprecated MODELSET


def listify(value: Any) -> Sequence[Any]:
    """A single name becomes a one-element sequence (lists and tuples are kept)."""
    return value if isinstance(value, (list, tuple)) else (value,)


def text(value: Any) -> str:
    """A name given as bytes or text, as text: aiworker's names are UTF-8 (the stream entry and
    the replies carry them as text), and one that is not is refused as the gateway refuses it."""
    if not isinstance(value, (bytes, bytearray)):
        return str(value)
    found = strict_text(value)
    if found is None:
        shown = bytes(value).decode(errors="backslashreplace")
        raise AIError(messages.NAME_NOT_UTF8.format(name=shown))
    return found


def _check_device(device: str, split: bool = True) -> None:
    kind = device.split(":")[0] if split else device
    if kind.upper() not in ALLOWED_DEVICES:
        raise ValueError(f"Device not allowed. Use any from {ALLOWED_DEVICES}")


def _check_backend(backend: str, allowed: set[str]) -> None:
    if backend.upper() not in allowed:
        raise ValueError(f"Backend not allowed. Use any from {allowed}")


def _chunks(data: Any, size: int) -> list[Any]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def modelstore(
    key: Any,
    backend: str,
    device: str,
    data: Any,
    batch: int | None,
    minbatch: int | None,
    minbatchtimeout: int | None,
    tag: Any,
    inputs: Any,
    outputs: Any,
    *,
    chunk_size: int,
    backends: set[str],
    io_backends: set[str],
    io_optional: bool = False,
) -> list[Any]:
    """AI.MODELSTORE with redisai-py's checks. ``io_optional``: a zipped TF SavedModel, which
    names its inputs and outputs itself."""
    if key is None:
        raise ValueError("Model name was not given")
    _check_device(device)
    _check_backend(backend, backends)
    args: list[Any] = ["AI.MODELSTORE", key, backend, device]
    if tag is not None:
        args += ["TAG", tag]
    if batch is not None:
        args += ["BATCHSIZE", batch]
    if minbatch is not None:
        if batch is None:
            raise ValueError("Minbatch is not allowed without batch")
        args += ["MINBATCHSIZE", minbatch]
    if minbatchtimeout is not None:
        if minbatch is None:
            raise ValueError("Minbatchtimeout is not allowed without minbatch")
        args += ["MINBATCHTIMEOUT", minbatchtimeout]
    if backend.upper() in io_backends and not (io_optional and inputs is None and outputs is None):
        if not all((inputs, outputs)):
            raise ValueError("Require keyword arguments inputs and outputs for TF models")
        args += ["INPUTS", len(listify(inputs)), *listify(inputs)]
        args += ["OUTPUTS", len(listify(outputs)), *listify(outputs)]
    elif inputs is not None or outputs is not None:
        raise ValueError("Inputs and outputs keywords should not be specified for this backend")
    return [*args, "BLOB", *_chunks(data, chunk_size)]


def modelset(
    key: Any,
    backend: str,
    device: str,
    data: Any,
    batch: int | None,
    minbatch: int | None,
    tag: Any,
    inputs: Any,
    outputs: Any,
    *,
    backends: set[str],
    io_backends: set[str],
) -> list[Any]:
    """The deprecated AI.MODELSET (redisai-py checked the device without its ``:n`` here)."""
    _check_device(device, split=False)
    _check_backend(backend, backends)
    args: list[Any] = ["AI.MODELSET", key, backend, device]
    if tag is not None:
        args += ["TAG", tag]
    if batch is not None:
        args += ["BATCHSIZE", batch]
    if minbatch is not None:
        if batch is None:
            raise ValueError("Minbatch is not allowed without batch")
        args += ["MINBATCHSIZE", minbatch]
    if backend.upper() in io_backends:
        if not all((inputs, outputs)):
            raise ValueError("Require keyword arguments input and output for TF models")
        args += ["INPUTS", *listify(inputs), "OUTPUTS", *listify(outputs)]
    return [*args, "BLOB", *_chunks(data, REDISAI_CHUNK)]


def modelget(key: Any, meta_only: bool = False) -> list[Any]:
    return ["AI.MODELGET", key, "META", *([] if meta_only else ["BLOB"])]


def modelexecute(key: Any, inputs: Any, outputs: Any, timeout: int | None) -> list[Any]:
    if key is None or inputs is None or outputs is None:
        raise ValueError("Missing required arguments for model execute command")
    ins, outs = listify(inputs), listify(outputs)
    args = ["AI.MODELEXECUTE", key, "INPUTS", len(ins), *ins, "OUTPUTS", len(outs), *outs]
    return args + (["TIMEOUT", timeout] if timeout is not None else [])


def modelrun(key: Any, inputs: Any, outputs: Any) -> list[Any]:
    return ["AI.MODELRUN", key, "INPUTS", *listify(inputs), "OUTPUTS", *listify(outputs)]


def dtype_name(dtype: Any) -> str:
    """RedisAI's type name for a ``dtype`` given with list/tuple values, redisai-py's way:
    ``"float"``, ``"float64"``, ``"int16"``, ``"str"`` (any numpy string spelling), ..., plus
    RedisAI's own names and numpy dtypes. Unknown names raise redisai-py's ``TypeError``."""
    if isinstance(dtype, str) and dtype.upper() in codec.NUMPY_DTYPES:
        return dtype.upper()
    if dtype is not None and not isinstance(dtype, str):
        try:
            resolved = np.dtype(dtype)
        except TypeError:
            resolved = None
        if resolved is not None:
            if resolved.kind in "US":
                return "STRING"
            if str(resolved) in DTYPES:
                return DTYPES[str(resolved)]
    try:
        # numpy's string dtypes have many spellings ("str", "U", "<U5") sharing one ``num``
        if np.dtype(dtype).num == np.dtype("str").num:
            return DTYPES["str"]
        return DTYPES[dtype.lower()]
    except KeyError:
        raise TypeError(
            f"``{dtype}`` is not supported by RedisAI. Currently "
            f"supported types are {list(DTYPES.keys())}"
        ) from None
    except AttributeError:
        raise TypeError(
            "tensorset() missing argument 'dtype' or value of 'dtype' is None"
        ) from None


def array_dtype(array: np.ndarray) -> str:
    """RedisAI's type name of a numpy array, or redisai-py's ``TypeError``."""
    if array.dtype.kind in "USO":  # unicode as redisai-py; bytes and objects too
        return "STRING"
    name = DTYPES.get(str(array.dtype).lstrip("<=|"))
    if name is None and array.dtype.byteorder == ">":  # big-endian numbers are stored as LE
        name = DTYPES.get(str(array.dtype.newbyteorder("<")).lstrip("<"))
    if name is None:
        raise TypeError(f"RedisAI doesn't support tensors of type {array.dtype}")
    return name


def tensorset(
    key: Any, tensor: Any, shape: Sequence[int] | None = None, dtype: Any = None
) -> tuple[list[Any], np.ndarray]:
    """AI.TENSORSET's tokens and the validated array to store.

    A numpy array keeps its own type and shape (redisai-py ignored ``shape`` and ``dtype`` for
    arrays); lists and tuples are VALUES of ``dtype`` (shape defaults to their length). ``None``
    with ``dtype`` and ``shape`` is an uninitialised (zero) tensor, as RedisAI's TENSORSET
    without data.
    """
    if isinstance(tensor, np.ndarray):
        name = array_dtype(tensor)
        if name in ("UINT32", "UINT64"):  # RedisAI's own answer to these
            codec.parse_dtype(name)
        array = codec.as_array(tensor)
        blob: Any = codec.to_blob(array)
        if name == "STRING":
            blob = bytes(blob)
        return ["AI.TENSORSET", key, name, *tensor.shape, "BLOB", blob], array
    if isinstance(tensor, (list, tuple)):
        name = dtype_name(dtype)
        dims = tuple(shape) if shape is not None else (len(tensor),)
        args = ["AI.TENSORSET", key, name, *dims, "VALUES", *tensor]
        values = list(tensor)
        return args, codec.from_values(codec.parse_dtype(name), codec.parse_shape(dims), values)
    if tensor is None and dtype is not None and shape is not None:
        name = dtype_name(dtype)
        dims = tuple(shape)
        array = codec.zeros(codec.parse_dtype(name), codec.parse_shape(dims))
        return ["AI.TENSORSET", key, name, *dims], array
    raise TypeError(
        f"``tensor`` argument must be a numpy array or a list or a tuple, but got {type(tensor)}"
    )


def tensorget(key: Any, as_numpy: bool = True, meta_only: bool = False) -> list[Any]:
    args = ["AI.TENSORGET", key, "META"]
    if not meta_only:
        args.append("BLOB" if as_numpy is True else "VALUES")
    return args


def scriptstore(key: Any, device: str, script: Any, entry_points: Any, tag: Any) -> list[Any]:
    _check_device(device)
    if key is None or script is None or entry_points is None:
        raise ValueError("Missing required arguments for script store command")
    args = ["AI.SCRIPTSTORE", key, device, *(["TAG", tag] if tag else [])]
    points = listify(entry_points)
    return [*args, "ENTRY_POINTS", len(points), *points, "SOURCE", script]


def scriptset(key: Any, device: str, script: Any, tag: Any, check_device: bool = True) -> list[Any]:
    """``check_device``: redisai-py's check, which took ``CPU`` or ``GPU`` only (RedisAI itself
    took ``CPU:1`` too)."""
    if check_device:
        _check_device(device, split=False)
    return ["AI.SCRIPTSET", key, device, *(["TAG", tag] if tag else []), "SOURCE", script]


def scriptget(key: Any, meta_only: bool = False) -> list[Any]:
    return ["AI.SCRIPTGET", key, "META", *([] if meta_only else ["SOURCE"])]


def scriptrun(key: Any, function: Any, inputs: Any, outputs: Any) -> list[Any]:
    if key is None or function is None:
        raise ValueError("Missing required arguments for script run command")
    return [
        "AI.SCRIPTRUN",
        key,
        function,
        "INPUTS",
        *listify(inputs),
        "OUTPUTS",
        *listify(outputs),
    ]


def scriptexecute(
    key: Any,
    function: Any,
    keys: Any,
    inputs: Any,
    args: Any,
    outputs: Any,
    timeout: int | None,
) -> list[Any]:
    if key is None or function is None or (keys is None and inputs is None):
        raise ValueError("Missing required arguments for script execute command")
    tokens: list[Any] = ["AI.SCRIPTEXECUTE", key, function]
    for word, values in (("KEYS", keys), ("INPUTS", inputs), ("ARGS", args), ("OUTPUTS", outputs)):
        if values is not None:
            tokens += [word, len(listify(values)), *listify(values)]
    return tokens + (["TIMEOUT", timeout] if timeout is not None else [])


def config(name: str, value: Any = None) -> str:
    """AI.CONFIG as redisai-py sent it: one string that redis-py splits into words."""
    return f"AI.CONFIG {name} {value}" if value is not None else f"AI.CONFIG GET {name}"


def loadbackend(identifier: str, path: str) -> str:
    return f"AI.CONFIG LOADBACKEND {identifier} {path}"
