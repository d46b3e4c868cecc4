"""The run commands: AI.MODELEXECUTE, AI.SCRIPTEXECUTE and the deprecated AI.MODELRUN / AI.SCRIPTRUN.

Each parser takes the arguments after the command name. ``in_dag`` applies the rules of a DAG op:
no TIMEOUT, and SCRIPTEXECUTE need not start with KEYS or INPUTS.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiworker.parser.common import is_word, parse_int, parse_timeout, wrong_arity
from aiworker.protocol.errors import AIError
from aiworker.protocol.requests import ModelExecute, ScriptExecute

DAG_TIMEOUT = "TIMEOUT not allowed within a DAG command"


def parse_modelexecute(args: Sequence[str], in_dag: bool = False) -> ModelExecute:
    """``AI.MODELEXECUTE key INPUTS n in... OUTPUTS m out... [TIMEOUT ms]``."""
    if len(args) < 7:
        raise wrong_arity("AI.MODELEXECUTE")
    key = args[0]
    if not is_word(args[1], "INPUTS"):
        raise AIError("INPUTS not specified")
    n_in = parse_int(args[2], "Invalid argument for input_count")
    if n_in <= 0:
        raise AIError("Input count must be a positive integer")
    inputs = args[3 : 3 + n_in]
    if len(inputs) < n_in:
        raise AIError(
            "number of input keys to AI.MODELEXECUTE command does not match the number of "
            "given arguments"
        )
    i = 3 + n_in
    if i >= len(args) or not is_word(args[i], "OUTPUTS"):
        raise AIError("OUTPUTS not specified")
    if i + 1 >= len(args):
        raise AIError("Invalid argument for output_count")
    n_out = parse_int(args[i + 1], "Invalid argument for output_count")
    if n_out <= 0:
        raise AIError("Output count must be a positive integer")
    outputs = args[i + 2 : i + 2 + n_out]
    if len(outputs) < n_out:
        raise AIError(
            "number of output keys to AI.MODELEXECUTE command does not match the number of "
            "given arguments"
        )
    i += 2 + n_out
    timeout = None
    if i < len(args):
        if not is_word(args[i], "TIMEOUT"):
            raise AIError(f"Invalid argument: {args[i]}")
        if in_dag:
            raise AIError(DAG_TIMEOUT)
        timeout = parse_timeout(args, i + 1, "No value provided for TIMEOUT")
        if i + 2 < len(args):
            raise AIError(f"Invalid argument: {args[i + 2]}")
    return ModelExecute(key, tuple(inputs), tuple(outputs), timeout)


def parse_modelrun(args: Sequence[str], in_dag: bool = False) -> ModelExecute:
    """Deprecated ``AI.MODELRUN key [TIMEOUT ms] INPUTS in... OUTPUTS out...``."""
    if len(args) < 5:
        raise wrong_arity("AI.MODELRUN")
    key, i, timeout = args[0], 1, None
    if is_word(args[i], "TIMEOUT"):
        if in_dag:
            raise AIError(DAG_TIMEOUT)
        timeout = parse_timeout(args, i + 1, "No value provided for TIMEOUT")
        i += 2
    if i >= len(args) or not is_word(args[i], "INPUTS"):
        raise AIError("INPUTS not specified")
    rest = list(args[i + 1 :])
    split = next((n for n, token in enumerate(rest) if is_word(token, "OUTPUTS")), None)
    if split is None:
        raise AIError("OUTPUTS not specified")
    return ModelExecute(key, tuple(rest[:split]), tuple(rest[split + 1 :]), timeout)


_SCRIPT_SCOPES = {"KEYS": "keys", "INPUTS": "inputs", "ARGS": "args", "OUTPUTS": "outputs"}
_SCRIPT_COUNT_ERRORS = {
    "KEYS": "Invalid argument for keys count in AI.SCRIPTEXECUTE",
    "ARGS": "Invalid argument for keys count in AI.SCRIPTEXECUTE",
    "INPUTS": "Invalid argument for inputs count in AI.SCRIPTEXECUTE",
    "OUTPUTS": "Invalid argument for outputs count in AI.SCRIPTEXECUTE",
}


def _check_leading_keys(args: Sequence[str]) -> None:
    """RedisAI validates a KEYS scope right after the function name before anything else."""
    if len(args) < 5:
        raise AIError("Missing arguments after KEYS keyword")
    count = parse_int(args[3], "Invalid or negative value found in number of KEYS")
    if count <= 0:
        raise AIError("Invalid or negative value found in number of KEYS")
    if count > len(args) - 4:
        raise AIError(
            "Number of pre declared KEYS to be used in the command does not match the number "
            "of given arguments"
        )


def parse_scriptexecute(args: Sequence[str], in_dag: bool = False) -> ScriptExecute:
    """``AI.SCRIPTEXECUTE key fn [KEYS n ...] [INPUTS n ...] [ARGS n ...] [OUTPUTS n ...]
    [TIMEOUT ms]``."""
    if len(args) < 2:
        raise wrong_arity("AI.SCRIPTEXECUTE")
    key, function = args[0], args[1]
    first = args[2].upper() if len(args) > 2 else ""
    if not in_dag and first not in ("KEYS", "INPUTS"):
        raise AIError("KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command")
    if first == "KEYS":
        _check_leading_keys(args)
    scopes: dict[str, tuple[str, ...]] = {}
    timeout = None
    i = 2
    while i < len(args):
        word = args[i].upper()
        if word == "TIMEOUT":
            if in_dag:
                raise AIError(DAG_TIMEOUT)
            timeout = parse_timeout(
                args, i + 1, "No value provided for TIMEOUT in AI.SCRIPTEXECUTE"
            )
            if i + 2 < len(args):
                raise AIError("Encountered problem parsing AI.SCRIPTEXECUTE")
            break
        if word not in _SCRIPT_SCOPES:
            raise AIError(f"Invalid AI.SCRIPTEXECUTE command. Unexpected argument: {args[i]}")
        if word in scopes:
            raise AIError(f"Already Encountered {word} scope in AI.SCRIPTEXECUTE command")
        if i + 1 >= len(args):
            raise AIError("Invalid arguments provided to AI.SCRIPTEXECUTE")
        count = parse_int(args[i + 1], _SCRIPT_COUNT_ERRORS[word])
        if count < 0:
            raise AIError(_SCRIPT_COUNT_ERRORS[word])
        values = tuple(args[i + 2 : i + 2 + count])
        if len(values) < count:
            raise AIError(
                f"number of {_SCRIPT_SCOPES[word]} to AI.SCRIPTEXECUTE command does not match "
                "the number of given arguments"
            )
        scopes[word] = values
        i += 2 + count
    return ScriptExecute(
        key,
        function,
        keys=scopes.get("KEYS", ()),
        inputs=scopes.get("INPUTS", ()),
        args=scopes.get("ARGS", ()),
        outputs=scopes.get("OUTPUTS", ()),
        timeout_ms=timeout,
    )


def parse_scriptrun(args: Sequence[str], in_dag: bool = False) -> ScriptExecute:
    """Deprecated ``AI.SCRIPTRUN key fn [TIMEOUT ms] INPUTS in... [$ in...] OUTPUTS out...``."""
    if len(args) < 2:
        raise wrong_arity("AI.SCRIPTRUN")
    key, function = args[0], args[1]
    if function.upper() in ("TIMEOUT", "INPUTS", "OUTPUTS"):
        raise AIError("function name not specified")
    inputs: list[str] = []
    outputs: list[str] = []
    section = ""  # "", "INPUTS" or "OUTPUTS"
    timeout: int | None = None
    variadic: int | None = None
    inputs_done = False
    i = 2
    while i < len(args):
        token = args[i]
        word = token.upper()
        if word == "TIMEOUT":
            if in_dag:
                raise AIError(DAG_TIMEOUT)
            if timeout is not None:
                raise AIError("Already encountered an TIMEOUT section in SCRIPTRUN")
            timeout = parse_timeout(args, i + 1, "No value provided for TIMEOUT")
            i += 2
            continue
        if word == "INPUTS":
            if inputs_done:
                raise AIError("Already encountered an INPUTS section in SCRIPTRUN")
            if section == "INPUTS":
                raise AIError("Already encountered an INPUTS keyword in SCRIPTRUN")
            section = "INPUTS"
        elif word == "OUTPUTS":
            if section == "OUTPUTS":
                raise AIError("Already encountered an OUTPUTS keyword in SCRIPTRUN")
            section, inputs_done = "OUTPUTS", True
        elif token == "$":
            if section != "INPUTS":
                raise AIError(
                    "Encountered a variable size list of tensors outside of input section"
                )
            if variadic is not None:
                raise AIError("Already encountered a variable size list of tensors")
            variadic = len(inputs)
        elif section == "INPUTS":
            inputs.append(token)
        elif section == "OUTPUTS":
            outputs.append(token)
        else:
            raise AIError("Unrecongnized parameter to SCRIPTRUN")  # sic: RedisAI's spelling
        i += 1
    return ScriptExecute(
        key,
        function,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        timeout_ms=timeout,
        variadic=variadic,
    )
