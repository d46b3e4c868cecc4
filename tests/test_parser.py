"""Table-driven tests of the RedisAI command parser: every command form and every argument error."""

from __future__ import annotations

import numpy as np
import pytest

from aiworker.parser import parse, parse_command, tokenize
from aiworker.parser.commands import (
    ConfigCommand,
    InfoGet,
    ModelDel,
    ModelGet,
    ModelScan,
    ModelStore,
    ModuleInfo,
    ScriptDel,
    ScriptGet,
    ScriptScan,
    ScriptStore,
)
from aiworker.parser.entry import decode_entry
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.errors import AIError
from aiworker.protocol.requests import DagExecute, ModelExecute, ScriptExecute, TensorGet, TensorSet


def f32(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


ME = ModelExecute
SE = ScriptExecute
TG = TensorGet

# (command, the typed request it parses to)
VALID: list[tuple[str, object]] = [
    # tensors
    ("AI.TENSORSET a FLOAT 2 VALUES 2 3", TensorSet("a", "FLOAT", (2,), f32(2, 3))),
    ("ai.tensorset a float 1 2 values 2 3", TensorSet("a", "FLOAT", (1, 2), f32(2, 3))),
    ("AI.TENSORSET a INT8 2", TensorSet("a", "INT8", (2,), None)),
    ("AI.TENSORSET a FLOAT VALUES 7", TensorSet("a", "FLOAT", (), f32(7))),
    ('AI.TENSORSET a FLOAT 1 BLOB "\\x00\\x00\\x80\\x3f"', TensorSet("a", "FLOAT", (1,), f32(1))),
    ("AI.TENSORSET s STRING 2 VALUES x yz", TensorSet("s", "STRING", (2,), b"x\0yz\0")),
    ('AI.TENSORSET s STRING 1 BLOB "ab\\x00"', TensorSet("s", "STRING", (1,), b"ab\0")),
    ("AI.TENSORSET b BOOL 2 VALUES 1 0", TensorSet("b", "BOOL", (2,), b"\1\0")),
    ("AI.TENSORGET a", TG("a", meta=True, data="BLOB")),
    ("AI.TENSORGET a META", TG("a", meta=True, data="")),
    ("AI.TENSORGET a BLOB", TG("a", meta=False, data="BLOB")),
    ("AI.TENSORGET a values", TG("a", meta=False, data="VALUES")),
    ("AI.TENSORGET a META VALUES", TG("a", meta=True, data="VALUES")),
    ("AI.TENSORGET a META BLOB", TG("a", meta=True, data="BLOB")),
    # models
    (
        "AI.MODELSTORE m TORCH CPU TAG v1 BATCHSIZE 4 MINBATCHSIZE 2 MINBATCHTIMEOUT 10 BLOB ab cd",
        ModelStore("m", "TORCH", "CPU", b"abcd", "v1", 4, 2, 10),
    ),
    ("AI.MODELSTORE m torch gpu:1 BLOB x", ModelStore("m", "TORCH", "gpu:1", b"x")),
    (
        "AI.MODELSTORE m TF CPU INPUTS 2 a b OUTPUTS 1 c BLOB x",
        ModelStore("m", "TF", "CPU", b"x", inputs=("a", "b"), outputs=("c",)),
    ),
    (
        "AI.MODELSET m TF CPU INPUTS a b OUTPUTS c BLOB x",
        ModelStore("m", "TF", "CPU", b"x", inputs=("a", "b"), outputs=("c",), deprecated=True),
    ),
    (
        "AI.MODELSET m TORCH CPU TAG t BATCHSIZE 2 INPUTS a OUTPUTS b BLOB x",
        ModelStore("m", "TORCH", "CPU", b"x", "t", 2, deprecated=True),
    ),
    ("AI.MODELGET m", ModelGet("m", True, True)),
    ("AI.MODELGET m META", ModelGet("m", True, False)),
    ("AI.MODELGET m BLOB", ModelGet("m", False, True)),
    ("AI.MODELGET m META BLOB", ModelGet("m", True, True)),
    ("AI.MODELGET m whatever", ModelGet("m", True, True)),
    ("AI.MODELDEL m", ModelDel("m")),
    ("AI._MODELSCAN", ModelScan()),
    ("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c", ME("m", ("a", "b"), ("c",))),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 c TIMEOUT 5", ME("m", ("a",), ("c",), 5)),
    (
        "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 c TIMEOUT 9223372036854775807",
        ME("m", ("a",), ("c",), 9223372036854775807),
    ),
    ("AI.MODELRUN m INPUTS a b OUTPUTS c", ME("m", ("a", "b"), ("c",))),
    ("AI.MODELRUN m TIMEOUT 9 INPUTS a OUTPUTS c d", ME("m", ("a",), ("c", "d"), 9)),
    # scripts
    (
        "AI.SCRIPTSTORE s CPU TAG t ENTRY_POINTS 2 f g SOURCE 'def f(): pass'",
        ScriptStore("s", "CPU", "def f(): pass", ("f", "g"), "t"),
    ),
    (
        "AI.SCRIPTSTORE s CPU ENTRY_POINTS 1 f SOURCE src",
        ScriptStore("s", "CPU", "src", ("f",)),
    ),
    ("AI.SCRIPTSET s CPU SOURCE src", ScriptStore("s", "CPU", "src", deprecated=True)),
    (
        "AI.SCRIPTSET s CPU TAG t SOURCE src",
        ScriptStore("s", "CPU", "src", tag="t", deprecated=True),
    ),
    ("AI.SCRIPTGET s", ScriptGet("s", True, True)),
    ("AI.SCRIPTGET s META", ScriptGet("s", True, False)),
    ("AI.SCRIPTGET s SOURCE", ScriptGet("s", False, True)),
    ("AI.SCRIPTDEL s", ScriptDel("s")),
    ("AI._SCRIPTSCAN", ScriptScan()),
    (
        "AI.SCRIPTEXECUTE s f KEYS 1 k INPUTS 2 a b ARGS 1 x OUTPUTS 1 c TIMEOUT 3",
        SE("s", "f", ("k",), ("a", "b"), ("x",), ("c",), 3),
    ),
    ("AI.SCRIPTEXECUTE s f INPUTS 1 a OUTPUTS 1 c", SE("s", "f", inputs=("a",), outputs=("c",))),
    (
        "AI.SCRIPTRUN s f INPUTS a $ b c OUTPUTS d",
        SE("s", "f", inputs=("a", "b", "c"), outputs=("d",), variadic=1),
    ),
    (
        "AI.SCRIPTRUN s f TIMEOUT 4 INPUTS a OUTPUTS d",
        SE("s", "f", inputs=("a",), outputs=("d",), timeout_ms=4),
    ),
    # info and config
    ("AI.INFO", ModuleInfo()),
    ("AI.INFO m", InfoGet("m")),
    ("AI.INFO m RESETSTAT", InfoGet("m", reset=True)),
    ("AI.INFO m other", InfoGet("m")),
    (
        "AI.CONFIG LOADBACKEND TORCH libtorch.so",
        ConfigCommand("LOADBACKEND", "TORCH", "libtorch.so"),
    ),
    ("AI.CONFIG BACKENDSPATH /usr/lib", ConfigCommand("SET", "BACKENDSPATH", "/usr/lib")),
    ("AI.CONFIG MODEL_CHUNK_SIZE 1024", ConfigCommand("SET", "MODEL_CHUNK_SIZE", "1024")),
    ("AI.CONFIG GET model_chunk_size", ConfigCommand("GET", "MODEL_CHUNK_SIZE")),
    ("AI.CONFIG THREADS_PER_QUEUE 4", ConfigCommand("SET", "THREADS_PER_QUEUE", "4")),
    # DAGs
    (
        "AI.DAGEXECUTE LOAD 1 a PERSIST 1 c ROUTING a TIMEOUT 50 "
        "|> AI.TENSORSET b FLOAT 1 VALUES 1 |> AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c "
        "|> AI.SCRIPTEXECUTE s f INPUTS 1 c OUTPUTS 1 d |> AI.TENSORGET d VALUES",
        DagExecute(
            (
                TensorSet("b", "FLOAT", (1,), f32(1)),
                ME("m", ("a", "b"), ("c",)),
                SE("s", "f", inputs=("c",), outputs=("d",)),
                TG("d", meta=False, data="VALUES"),
            ),
            load=("a",),
            persist=("c",),
            routing="a",
            timeout_ms=50,
        ),
    ),
    (
        "AI.DAGEXECUTE_RO ROUTING x |> AI.TENSORSET a FLOAT 1 |> AI.TENSORGET a META",
        DagExecute(
            (TensorSet("a", "FLOAT", (1,)), TG("a", meta=True, data="")),
            routing="x",
            readonly=True,
        ),
    ),
    (
        "AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTEXECUTE s f ARGS 1 x INPUTS 1 a OUTPUTS 1 b",
        DagExecute((SE("s", "f", inputs=("a",), args=("x",), outputs=("b",)),), load=("a",)),
    ),
    (
        "AI.DAGRUN |> AI.TENSORSET a FLOAT 1 |> AI.MODELRUN m INPUTS a OUTPUTS b "
        "|> AI.SCRIPTRUN s f INPUTS b OUTPUTS c |> AI.TENSORGET c BLOB",
        DagExecute(
            (
                TensorSet("a", "FLOAT", (1,)),
                ME("m", ("a",), ("b",)),
                SE("s", "f", inputs=("b",), outputs=("c",)),
                TG("c", meta=False, data="BLOB"),
            )
        ),
    ),
    (
        "AI.DAGRUN_RO LOAD 1 a |> AI.TENSORGET a",
        DagExecute((TG("a"),), load=("a",), readonly=True),
    ),
    (
        # LOADed names may be persisted; a later TENSORSET shadows a LOADed name
        "AI.DAGEXECUTE LOAD 1 a PERSIST 1 a |> AI.TENSORSET a FLOAT 1 |> AI.TENSORGET a",
        DagExecute((TensorSet("a", "FLOAT", (1,)), TG("a")), load=("a",), persist=("a",)),
    ),
]

LONG_DAG = "AI.DAGEXECUTE LOAD 1 a |> AI.TENSORGET a"

# (command, RedisAI's error message as redis-py shows it)
ERRORS: list[tuple[str, str]] = [
    # AI.TENSORSET
    ("AI.TENSORSET", "wrong number of arguments for 'AI.TENSORSET' command"),
    ("AI.TENSORSET z", "wrong number of arguments for 'AI.TENSORSET' command"),
    ("AI.TENSORSET z FLOAT", "wrong number of arguments for 'AI.TENSORSET' command"),
    ("AI.TENSORSET z INT128 2", "invalid data type"),
    ("AI.TENSORSET z UINT32 2", "invalid data type"),
    ("AI.TENSORSET z FLOAT 2 bad", "invalid or negative value found in tensor shape"),
    ("AI.TENSORSET z FLOAT -1", "invalid or negative value found in tensor shape"),
    ("AI.TENSORSET z FLOAT 0", "invalid or negative value found in tensor shape"),
    (
        "AI.TENSORSET z FLOAT 1 BLOB",
        "a single binary string should come after the BLOB argument in 'AI.TENSORSET' command",
    ),
    (
        "AI.TENSORSET z FLOAT 1 BLOB a b",
        "a single binary string should come after the BLOB argument in 'AI.TENSORSET' command",
    ),
    (
        "AI.TENSORSET z FLOAT 2 VALUES 1",
        "wrong number of values was given in 'AI.TENSORSET' command",
    ),
    (
        "AI.TENSORSET z FLOAT 1 VALUES 1 2",
        "wrong number of values was given in 'AI.TENSORSET' command",
    ),
    ("AI.TENSORSET z FLOAT 1 VALUES x", "invalid value"),
    ("AI.TENSORSET z INT32 1 VALUES 1.87", "invalid value"),
    ("AI.TENSORSET z INT8 1 VALUES 128", "invalid value"),
    ("AI.TENSORSET z UINT8 1 VALUES 256", "invalid value"),
    ("AI.TENSORSET z BOOL 2 VALUES 1 2", "invalid value"),
    ('AI.TENSORSET z STRING 1 VALUES "a\\x00b"', "C-string value contains null character"),
    ("AI.TENSORSET z FLOAT 2 BLOB abc", "data length does not match tensor shape and type"),
    ('AI.TENSORSET z BOOL 2 BLOB "\\x01\\x02"', "BOOL tensor elements must be 0 or 1"),
    (
        "AI.TENSORSET z STRING 2 BLOB ab",
        "Number of string elements in data blob does not match tensor length",
    ),
    # AI.TENSORGET
    ("AI.TENSORGET", "wrong number of arguments for 'AI.TENSORGET' command"),
    ("AI.TENSORGET a META BLOB extra", "wrong number of arguments for 'AI.TENSORGET' command"),
    ("AI.TENSORGET a bad", "unsupported data format"),
    ("AI.TENSORGET a BLOB VALUES", "both BLOB and VALUES specified"),
    # AI.MODELSTORE
    ("AI.MODELSTORE m TORCH BLOB x", "wrong number of arguments for 'AI.MODELSTORE' command"),
    ("AI.MODELSTORE m PYTORCH CPU BLOB x", "unsupported backend"),
    ("AI.MODELSTORE m TORCH bad_device BLOB x", "Invalid DEVICE"),
    ("AI.MODELSTORE m TORCH CPU:: BLOB x", "Invalid DEVICE"),
    ("AI.MODELSTORE m TORCH CPU:1.8 BLOB x", "Invalid DEVICE"),
    ("AI.MODELSTORE m TORCH CPU:123456 BLOB x", "Invalid DEVICE"),
    ("AI.MODELSTORE m TORCH CPU BATCHSIZE x BLOB x", "Invalid argument for BATCHSIZE"),
    ("AI.MODELSTORE m TORCH CPU BATCHSIZE -1 BLOB x", "Invalid argument for BATCHSIZE"),
    (
        "AI.MODELSTORE m TORCH CPU BATCHSIZE 2 MINBATCHSIZE x BLOB y",
        "Invalid argument for MINBATCHSIZE",
    ),
    ("AI.MODELSTORE m TORCH CPU MINBATCHSIZE 2 BLOB x", "MINBATCHSIZE specified without BATCHSIZE"),
    (
        "AI.MODELSTORE m TORCH CPU BATCHSIZE 2 MINBATCHSIZE 1 MINBATCHTIMEOUT x BLOB y",
        "Invalid argument for MINBATCHTIMEOUT",
    ),
    (
        "AI.MODELSTORE m TORCH CPU BATCHSIZE 2 MINBATCHTIMEOUT 5 BLOB x",
        "MINBATCHTIMEOUT specified without MINBATCHSIZE",
    ),
    ("AI.MODELSTORE m TORCH CPU TAG t BATCHSIZE 2", "Insufficient arguments, missing model BLOB"),
    ("AI.MODELSTORE m TORCH CPU BATCHSIZE 2 NOT_BLOB", "Invalid argument, expected BLOB"),
    ("AI.MODELSTORE m TORCH CPU TAG t BLOB", "Insufficient arguments, missing model BLOB"),
    ("AI.MODELSTORE m TF CPU BLOB x y", "INPUTS not specified for TF"),
    ("AI.MODELSTORE m TF CPU INPUTS x a BLOB y", "Invalid argument for input_count"),
    ("AI.MODELSTORE m TF CPU INPUTS 0 BLOB y", "Invalid argument for input_count"),
    (
        "AI.MODELSTORE m TF CPU INPUTS 9 a",
        "number of model inputs does not match the number of given arguments",
    ),
    ("AI.MODELSTORE m TF CPU INPUTS 1 a BLOB y", "OUTPUTS not specified for TF"),
    ("AI.MODELSTORE m TF CPU INPUTS 1 a OUTPUTS 0 BLOB y", "Invalid argument for output_count"),
    (
        "AI.MODELSTORE m TF CPU INPUTS 1 a OUTPUTS 5 b",
        "number of model outputs does not match the number of given arguments",
    ),
    (
        "AI.MODELSTORE m TORCH CPU INPUTS 1 a BLOB y",
        "INPUTS argument should not be specified for this backend",
    ),
    # AI.MODELSET (deprecated)
    ("AI.MODELSET m TORCH", "wrong number of arguments for 'AI.MODELSET' command"),
    ("AI.MODELSET m CAFFE CPU BLOB x", "unsupported backend"),
    ("AI.MODELSET m TORCH BLOB x", "Invalid DEVICE"),
    ("AI.MODELSET m TORCH CPU:12345678 BLOB x", "Invalid DEVICE"),
    (
        "AI.MODELSET m TFLITE CPU BATCHSIZE 2 BLOB x",
        "Auto-batching not supported by the TFLITE backend",
    ),
    ("AI.MODELSET m TORCH CPU BATCHSIZE x BLOB y", "Invalid argument for BATCHSIZE"),
    ("AI.MODELSET m TORCH CPU MINBATCHSIZE 2 BLOB x", "MINBATCHSIZE specified without BATCHSIZE"),
    (
        "AI.MODELSET m TORCH CPU BATCHSIZE 2 MINBATCHSIZE x BLOB y",
        "Invalid argument for MINBATCHSIZE",
    ),
    (
        "AI.MODELSET m TORCH CPU MINBATCHTIMEOUT 2 BLOB x",
        "MINBATCHTIMEOUT specified without BATCHSIZE",
    ),
    (
        "AI.MODELSET m TORCH CPU BATCHSIZE 2 MINBATCHTIMEOUT 2 BLOB x",
        "MINBATCHTIMEOUT specified without MINBATCHSIZE",
    ),
    (
        "AI.MODELSET m TORCH CPU BATCHSIZE 2 MINBATCHSIZE 1 MINBATCHTIMEOUT x BLOB y",
        "Invalid argument for MINBATCHTIMEOUT",
    ),
    ("AI.MODELSET m TORCH CPU TAG t", "Insufficient arguments, missing model BLOB"),
    ("AI.MODELSET m TORCH CPU TAG t BLOB", "Insufficient arguments, missing model BLOB"),
    ("AI.MODELSET m TF CPU BLOB x", "Insufficient arguments, INPUTS and OUTPUTS not specified"),
    ("AI.MODELSET m TF CPU a OUTPUTS b BLOB x", "INPUTS not specified"),
    ("AI.MODELSET m TF CPU INPUTS a BLOB x", "OUTPUTS not specified"),
    # AI.MODELGET / AI.MODELDEL / AI._MODELSCAN
    ("AI.MODELGET", "wrong number of arguments for 'AI.MODELGET' command"),
    ("AI.MODELGET m META BLOB x", "wrong number of arguments for 'AI.MODELGET' command"),
    ("AI.MODELDEL", "wrong number of arguments for 'AI.MODELDEL' command"),
    ("AI.MODELDEL a b", "wrong number of arguments for 'AI.MODELDEL' command"),
    ("AI._MODELSCAN x", "wrong number of arguments for 'AI._MODELSCAN' command"),
    # AI.MODELEXECUTE
    (
        "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS",
        "wrong number of arguments for 'AI.MODELEXECUTE' command",
    ),
    ("AI.MODELEXECUTE m TIMEOUT 5 INPUTS 1 a OUTPUTS 1 b", "INPUTS not specified"),
    ("AI.MODELEXECUTE m INPUTS x a OUTPUTS 1 b", "Invalid argument for input_count"),
    ("AI.MODELEXECUTE m INPUTS 0 a OUTPUTS 1 b", "Input count must be a positive integer"),
    (
        "AI.MODELEXECUTE m INPUTS 9 a b OUTPUTS 1 c",
        "number of input keys to AI.MODELEXECUTE command does not match the number of given arguments",
    ),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUT 1 b c", "OUTPUTS not specified"),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS x b c", "Invalid argument for output_count"),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS -1 b c", "Output count must be a positive integer"),
    (
        "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 3 b c",
        "number of output keys to AI.MODELEXECUTE command does not match the number of given arguments",
    ),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b BAD", "Invalid argument: BAD"),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT", "No value provided for TIMEOUT"),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT x", "Invalid value for TIMEOUT"),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT 0", "Invalid value for TIMEOUT"),
    # RedisAI read integers with Redis' string2ll: a signed 64-bit integer, no "+", no leading 0
    (
        "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT 9223372036854775808",
        "Invalid value for TIMEOUT",
    ),
    (
        "AI.DAGEXECUTE LOAD 1 a TIMEOUT 100000000000000000000000000000 |> AI.TENSORGET a META",
        "Invalid value for TIMEOUT",
    ),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT +5", "Invalid value for TIMEOUT"),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT 05", "Invalid value for TIMEOUT"),
    ("AI.TENSORSET t FLOAT -0 VALUES 1", "invalid or negative value found in tensor shape"),
    ("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT 5 x", "Invalid argument: x"),
    # AI.MODELRUN (deprecated)
    ("AI.MODELRUN m INPUTS a OUTPUTS", "wrong number of arguments for 'AI.MODELRUN' command"),
    ("AI.MODELRUN m a b OUTPUTS c d", "INPUTS not specified"),
    ("AI.MODELRUN m TIMEOUT x INPUTS a OUTPUTS b", "Invalid value for TIMEOUT"),
    ("AI.MODELRUN m INPUTS a b c d", "OUTPUTS not specified"),
    # AI.SCRIPTSTORE / AI.SCRIPTSET
    (
        "AI.SCRIPTSTORE s CPU ENTRY_POINTS 1 f SOURCE",
        "wrong number of arguments for 'AI.SCRIPTSTORE' command",
    ),
    (
        "AI.SCRIPTSTORE s CPU TAG t SOURCE x y z",
        "Insufficient arguments, missing script entry points",
    ),
    (
        "AI.SCRIPTSTORE s CPU ENTRY_POINTS x f SOURCE src",
        "Non numeric entry points number provided to AI.SCRIPTSTORE command",
    ),
    (
        "AI.SCRIPTSTORE s CPU ENTRY_POINTS 5 bar bar_variadic SOURCE script",
        "Insufficient arguments, missing script entry points",
    ),
    (
        "AI.SCRIPTSTORE s CPU ENTRY_POINTS 1 f NOSOURCE src",
        "Insufficient arguments, missing script SOURCE",
    ),
    (
        "AI.SCRIPTSTORE s CPU ENTRY_POINTS 2 f g SOURCE",
        "Insufficient arguments, missing script SOURCE",
    ),
    ("AI.SCRIPTSET s CPU SOURCE", "wrong number of arguments for 'AI.SCRIPTSET' command"),
    ("AI.SCRIPTSET s CPU TAG t SOURCE x y", "wrong number of arguments for 'AI.SCRIPTSET' command"),
    ("AI.SCRIPTSET s CPU TAG t NOSOURCE x", "Insufficient arguments, missing script SOURCE"),
    # AI.SCRIPTGET / AI.SCRIPTDEL / AI._SCRIPTSCAN
    ("AI.SCRIPTGET", "wrong number of arguments for 'AI.SCRIPTGET' command"),
    ("AI.SCRIPTDEL", "wrong number of arguments for 'AI.SCRIPTDEL' command"),
    ("AI._SCRIPTSCAN x", "wrong number of arguments for 'AI._SCRIPTSCAN' command"),
    # AI.SCRIPTEXECUTE
    ("AI.SCRIPTEXECUTE s", "wrong number of arguments for 'AI.SCRIPTEXECUTE' command"),
    (
        "AI.SCRIPTEXECUTE s bar OUTPUTS 2 a a",
        "KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command",
    ),
    ("AI.SCRIPTEXECUTE s bar KEYS 1", "Missing arguments after KEYS keyword"),
    ("AI.SCRIPTEXECUTE s bar KEYS x a b", "Invalid or negative value found in number of KEYS"),
    ("AI.SCRIPTEXECUTE s bar KEYS 0 a b", "Invalid or negative value found in number of KEYS"),
    (
        "AI.SCRIPTEXECUTE s bar KEYS 5 a b",
        "Number of pre declared KEYS to be used in the command does not match the number of "
        "given arguments",
    ),
    (
        "AI.SCRIPTEXECUTE s bar KEYS 1 k KEYS 1 j",
        "Already Encountered KEYS scope in AI.SCRIPTEXECUTE command",
    ),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a INPUTS 1 b",
        "Already Encountered INPUTS scope in AI.SCRIPTEXECUTE command",
    ),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a ARGS 1 x ARGS 1 y",
        "Already Encountered ARGS scope in AI.SCRIPTEXECUTE command",
    ),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a OUTPUTS 1 b OUTPUTS 1 c",
        "Already Encountered OUTPUTS scope in AI.SCRIPTEXECUTE command",
    ),
    ("AI.SCRIPTEXECUTE s bar KEYS 1 {1} ARGS", "Invalid arguments provided to AI.SCRIPTEXECUTE"),
    ("AI.SCRIPTEXECUTE s bar INPUTS x a", "Invalid argument for inputs count in AI.SCRIPTEXECUTE"),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a OUTPUTS x",
        "Invalid argument for outputs count in AI.SCRIPTEXECUTE",
    ),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a ARGS x",
        "Invalid argument for keys count in AI.SCRIPTEXECUTE",
    ),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 3 a",
        "number of inputs to AI.SCRIPTEXECUTE command does not match the number of given arguments",
    ),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a OUTPUTS 2 b",
        "number of outputs to AI.SCRIPTEXECUTE command does not match the number of given arguments",
    ),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a KEYS 2 b",
        "number of keys to AI.SCRIPTEXECUTE command does not match the number of given arguments",
    ),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a ARGS 2 b",
        "number of args to AI.SCRIPTEXECUTE command does not match the number of given arguments",
    ),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a TIMEOUT",
        "No value provided for TIMEOUT in AI.SCRIPTEXECUTE",
    ),
    ("AI.SCRIPTEXECUTE s bar INPUTS 1 a TIMEOUT -3", "Invalid value for TIMEOUT"),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a TIMEOUT 3 x",
        "Encountered problem parsing AI.SCRIPTEXECUTE",
    ),
    (
        "AI.SCRIPTEXECUTE s bar INPUTS 1 a BAD",
        "Invalid AI.SCRIPTEXECUTE command. Unexpected argument: BAD",
    ),
    # AI.SCRIPTRUN (deprecated)
    ("AI.SCRIPTRUN s", "wrong number of arguments for 'AI.SCRIPTRUN' command"),
    ("AI.SCRIPTRUN s INPUTS a OUTPUTS b", "function name not specified"),
    (
        "AI.SCRIPTRUN s f TIMEOUT 1 TIMEOUT 2 INPUTS a",
        "Already encountered an TIMEOUT section in SCRIPTRUN",
    ),
    (
        "AI.SCRIPTRUN s f INPUTS a OUTPUTS b INPUTS c",
        "Already encountered an INPUTS section in SCRIPTRUN",
    ),
    ("AI.SCRIPTRUN s f INPUTS a INPUTS c", "Already encountered an INPUTS keyword in SCRIPTRUN"),
    (
        "AI.SCRIPTRUN s f INPUTS a OUTPUTS b OUTPUTS c",
        "Already encountered an OUTPUTS keyword in SCRIPTRUN",
    ),
    (
        "AI.SCRIPTRUN s f INPUTS a OUTPUTS $ b",
        "Encountered a variable size list of tensors outside of input section",
    ),
    (
        "AI.SCRIPTRUN s f INPUTS $ a $ b OUTPUTS c",
        "Already encountered a variable size list of tensors",
    ),
    ("AI.SCRIPTRUN s f a INPUTS b", "Unrecongnized parameter to SCRIPTRUN"),
    ("AI.SCRIPTRUN s f TIMEOUT x INPUTS a", "Invalid value for TIMEOUT"),
    # AI.INFO / AI.CONFIG
    ("AI.INFO m RESETSTAT x", "wrong number of arguments for 'AI.INFO' command"),
    ("AI.CONFIG", "wrong number of arguments for 'AI.CONFIG' command"),
    ("AI.CONFIG LOADBACKEND TORCH", "wrong number of arguments for 'AI.CONFIG' command"),
    ("AI.CONFIG LOADBACKEND CAFFE x.so", "unsupported backend"),
    ("AI.CONFIG BACKENDSPATH", "BACKENDSPATH: missing path argument"),
    ("AI.CONFIG MODEL_CHUNK_SIZE", "MODEL_CHUNK_SIZE: missing chunk size"),
    ("AI.CONFIG MODEL_CHUNK_SIZE x", "MODEL_CHUNK_SIZE: invalid chunk size"),
    ("AI.CONFIG MODEL_CHUNK_SIZE 0", "MODEL_CHUNK_SIZE: invalid chunk size"),
    ("AI.CONFIG BAD", "unsupported subcommand"),
    ("AI.CONFIG GET", "wrong number of arguments for 'AI.CONFIG' command"),
    # AI.DAGEXECUTE / _RO: header
    ("AI.DAGEXECUTE LOAD 1 a |>", "missing arguments for 'AI.DAGEXECUTE' command"),
    ("AI.DAGEXECUTE_RO LOAD 1 a |>", "missing arguments for 'AI.DAGEXECUTE_RO' command"),
    (
        "AI.DAGEXECUTE ROUTING r TIMEOUT 5 LOAD 1",
        "missing arguments after LOAD keyword in DAG command",
    ),
    (
        "AI.DAGEXECUTE LOAD x a |> AI.TENSORGET a",
        "invalid or negative value found in number of keys to LOAD",
    ),
    (
        "AI.DAGEXECUTE LOAD 0 a |> AI.TENSORGET a",
        "invalid or negative value found in number of keys to LOAD",
    ),
    (
        "AI.DAGEXECUTE LOAD 2 a |> AI.TENSORGET a",
        "number of keys to LOAD into DAG does not match the number of given arguments",
    ),
    (
        "AI.DAGEXECUTE_RO PERSIST 1 a |> AI.TENSORSET a FLOAT 1",
        "PERSIST cannot be specified in a read-only DAG",
    ),
    (
        "AI.DAGEXECUTE ROUTING r TIMEOUT 5 PERSIST 1",
        "missing arguments after PERSIST keyword in DAG command",
    ),
    (
        "AI.DAGEXECUTE PERSIST -1 a |> AI.TENSORSET a FLOAT 1",
        "invalid or negative value found in number of keys to PERSIST",
    ),
    ("AI.DAGEXECUTE PERSIST 2 a a |> AI.TENSORSET a FLOAT 1", "PERSIST keys must be unique"),
    (
        "AI.DAGEXECUTE PERSIST 2 a |> AI.TENSORSET a FLOAT 1",
        "number of keys to PERSIST after DAG execution does not match the number of given arguments",
    ),
    ("AI.DAGEXECUTE LOAD 1 a TIMEOUT 5 ROUTING", "Missing ROUTING value"),
    ("AI.DAGEXECUTE LOAD 1 a TIMEOUT |> AI.TENSORGET a", "Invalid value for TIMEOUT"),
    ("AI.DAGEXECUTE LOAD 1 a ROUTING b TIMEOUT", "No value provided for TIMEOUT"),
    ("AI.DAGEXECUTE LOAD 1 a TIMEOUT 0 |> AI.TENSORGET a", "Invalid value for TIMEOUT"),
    (
        "AI.DAGEXECUTE LOAD 1 a BAD_ARG |> AI.TENSORGET a",
        "Invalid DAG command. Unexpected argument:  BAD_ARG",
    ),
    (
        "AI.DAGEXECUTE LOAD 1 a LOAD 1 b |> AI.TENSORGET a",
        "Invalid DAG command. Unexpected argument:  LOAD",
    ),
    ("AI.DAGEXECUTE LOAD 1 a ROUTING b |>", "Invalid DAG command. Unexpected argument:  |>"),
    (
        "AI.DAGEXECUTE TIMEOUT 5 |> AI.TENSORSET a FLOAT 1",
        "AI.DAGEXECUTE and AI.DAGEXECUTE_RO commands must contain at least one out of ROUTING, "
        "LOAD, PERSIST keywords",
    ),
    ("AI.DAGEXECUTE LOAD 1 a PERSIST 1 a", "DAG is empty"),
    # DAG ops
    (
        "AI.DAGEXECUTE LOAD 1 a |> AI.TENSORGET",
        "wrong number of arguments for 'AI.TENSORGET' command",
    ),
    (
        "AI.DAGEXECUTE LOAD 1 a |> AI.TENSORGET a META BLOB extra",
        "wrong number of arguments for 'AI.TENSORGET' command",
    ),
    (
        "AI.DAGEXECUTE LOAD 1 a |> AI.TENSORSET b",
        "wrong number of arguments for 'AI.TENSORSET' command",
    ),
    ("AI.DAGEXECUTE LOAD 1 a |> AI.TENSORGET a |>", "unsupported data format"),
    ("AI.DAGEXECUTE LOAD 1 a |> AI.BAD a", "Unsupported command within DAG"),
    ("AI.DAGEXECUTE LOAD 1 a |> GET a", "Unsupported command within DAG"),
    (
        "AI.DAGEXECUTE LOAD 1 a |> AI.MODELRUN m INPUTS a OUTPUTS b",
        "Deprecated AI.MODELRUN cannot be used in AI.DAGEXECUTE command",
    ),
    (
        "AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTRUN s f INPUTS a OUTPUTS b",
        "Deprecated AI.SCRIPTRUN cannot be used in AI.DAGEXECUTE command",
    ),
    (
        "AI.DAGRUN LOAD 1 a |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b",
        "AI.MODELEXECUTE cannot be used in a deprecated AI.DAGRUN command",
    ),
    (
        "AI.DAGRUN LOAD 1 a |> AI.SCRIPTEXECUTE s f INPUTS 1 a OUTPUTS 1 b",
        "AI.SCRIPTEXECUTE cannot be used in a deprecated AI.DAGRUN command",
    ),
    (
        "AI.DAGEXECUTE_RO LOAD 1 a |> AI.SCRIPTEXECUTE s f INPUTS 1 a OUTPUTS 1 b",
        "AI.SCRIPTEXECUTE command cannot be specified in a read-only DAG",
    ),
    (
        "AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT 5",
        "TIMEOUT not allowed within a DAG command",
    ),
    (
        "AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTEXECUTE s f INPUTS 1 a OUTPUTS 1 b TIMEOUT 5",
        "TIMEOUT not allowed within a DAG command",
    ),
    (
        "AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTEXECUTE s INPUTS 1 a OUTPUTS 1 b",
        "Invalid AI.SCRIPTEXECUTE command. Unexpected argument: 1",
    ),
    (
        "AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE m INPUTS 1 x OUTPUTS 1 b",
        "INPUT key cannot be found in DAG",
    ),
    ("AI.DAGEXECUTE LOAD 1 a |> AI.TENSORGET b", "INPUT key cannot be found in DAG"),
    (
        "AI.DAGEXECUTE LOAD 1 a PERSIST 1 z |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b",
        "PERSIST key cannot be found in DAG",
    ),
    # AI.DAGRUN (deprecated)
    ("AI.DAGRUN |>", "wrong number of arguments for 'AI.DAGRUN' command"),
    ("AI.DAGRUN_RO |> x", "wrong number of arguments for 'AI.DAGRUN_RO' command"),
    (
        "AI.DAGRUN_RO PERSIST 1 a |> AI.TENSORSET a FLOAT 1",
        "PERSIST cannot be specified in a read-only DAG",
    ),
    # unknown commands
    ("AI.NOPE x", "unknown command 'AI.NOPE'"),
]


@pytest.mark.parametrize(("command", "expected"), VALID, ids=[c[:60] for c, _ in VALID])
def test_parses(command: str, expected: object) -> None:
    assert parse(command) == expected


@pytest.mark.parametrize(("command", "message"), ERRORS, ids=[c[:60] for c, _ in ERRORS])
def test_errors(command: str, message: str) -> None:
    with pytest.raises(AIError) as info:
        parse(command)
    assert str(info.value) == message


def test_every_command_has_a_case() -> None:
    from aiworker.parser import DIRECT, QUEUED

    covered = {c.split()[0].upper() for c, _ in VALID} | {c.split()[0].upper() for c, _ in ERRORS}
    assert set(DIRECT) | set(QUEUED) <= covered


def test_tokens_may_be_bytes_and_numbers() -> None:
    blob = np.array([1.5, -2], dtype="<f4").tobytes()
    parsed = parse([b"AI.TENSORSET", "a", "FLOAT", 2, "BLOB", blob])
    assert parsed == TensorSet("a", "FLOAT", (2,), blob)


@pytest.mark.parametrize(
    ("line", "tokens"),
    [
        ('a "b c" d', ["a", "b c", "d"]),
        ("a 'b \\' c'", ["a", "b ' c"]),
        ('"\\x41\\n"', ["A\n"]),
        ("  x  ", ["x"]),
        # as redis-cli's and Redis' sdssplitargs: only ASCII blanks separate, a quote mid-token
        # starts a quoted part, NUL ends the line
        ("a\u00a0b c", ["a\u00a0b", "c"]),
        ("\x0b a\x0bb", ["a\x0bb"]),
        ('a"b c"', ["ab c"]),
        ("a\0b c", ["a"]),
        ('"\\x4"', ["x4"]),
    ],
)
def test_tokenize(line: str, tokens: list[str]) -> None:
    assert tokenize(line) == tokens


@pytest.mark.parametrize("line", ['"a"b', "'a'b", 'a"b c"d', "'a", 'x "a\0"'])
def test_a_closing_quote_must_end_its_token(line: str) -> None:
    with pytest.raises(AIError, match="unbalanced quotes"):
        tokenize(line)


def test_tokenize_binary_escape_roundtrips_bytes() -> None:
    parsed = parse('AI.TENSORSET a UINT8 2 BLOB "\\xff\\x80"')
    assert isinstance(parsed, TensorSet) and parsed.blob == b"\xff\x80"


def test_unbalanced_quotes() -> None:
    with pytest.raises(AIError, match="unbalanced quotes"):
        tokenize('AI.TENSORGET "a')


def test_parse_command_accepts_only_queueable_commands() -> None:
    assert isinstance(parse_command(LONG_DAG), DagExecute)
    with pytest.raises(AIError, match=r"unsupported command in a job: AI\.TENSORSET"):
        parse_command("AI.TENSORSET a FLOAT 1")


@pytest.mark.parametrize(
    "command",
    [
        LONG_DAG,
        "AI.DAGEXECUTE PERSIST 1 c TIMEOUT 9 |> AI.TENSORSET a STRING 2 VALUES x y "
        "|> AI.SCRIPTEXECUTE s f KEYS 1 k INPUTS 1 a ARGS 2 p q OUTPUTS 1 c |> AI.TENSORGET c META",
        "AI.SCRIPTRUN s f INPUTS a $ b c OUTPUTS d",
        "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT 3",
        "AI.DAGEXECUTE_RO LOAD 1 a |> AI.TENSORSET z BOOL 2 2 |> AI.TENSORGET a VALUES",
    ],
)
def test_compact_entry_roundtrip(command: str) -> None:
    request = parse_command(command)
    job = decode_entry("1700000000000-0", encode_entry(request, "reply"))
    assert job.request == request
    assert decode_entry("1700000000000-0", {"cmd": command, "reply": "r"}).request == request
