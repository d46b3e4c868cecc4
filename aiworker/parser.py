"""RedisAI command syntax -> request objects. Pure code, unit-tested without Redis.

``tokenize`` splits a command line the way redis-cli does (double quotes with escapes, single quotes);
``parse_command`` dispatches on the command name and raises ``AIError`` with RedisAI's messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiworker.errors import AIError
from aiworker.jobs import ModelExecute, Request, ScriptExecute

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a", '"': '"', "\\": "\\"}


def tokenize(line: str) -> list[str]:
    """Split like redis-cli: whitespace separates, quotes group, ``\\xHH`` and ``\\n`` escapes work."""
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        current: list[str] = []
        while i < n and not line[i].isspace():
            quote = line[i]
            if quote not in "\"'":
                current.append(line[i])
                i += 1
                continue
            i += 1
            while True:
                if i >= n:
                    raise AIError("Invalid argument(s): unbalanced quotes")
                ch = line[i]
                if ch == quote:
                    i += 1
                    break
                if quote == '"' and ch == "\\" and i + 1 < n:
                    nxt = line[i + 1]
                    if nxt == "x" and i + 3 < n:
                        try:
                            current.append(chr(int(line[i + 2 : i + 4], 16)))
                            i += 4
                            continue
                        except ValueError:
                            pass
                    current.append(_ESCAPES.get(nxt, nxt))
                    i += 2
                    continue
                if quote == "'" and ch == "\\" and i + 1 < n and line[i + 1] == "'":
                    current.append("'")
                    i += 2
                    continue
                current.append(ch)
                i += 1
        tokens.append("".join(current))
    return tokens


def wrong_arity(command: str) -> AIError:
    return AIError(f"wrong number of arguments for '{command}' command")


def _count(token: str, bad_message: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise AIError(bad_message) from None


def _parse_timeout(args: Sequence[str], i: int, missing: str) -> int:
    if i >= len(args):
        raise AIError(missing)
    try:
        value = int(args[i])
    except ValueError:
        raise AIError("Invalid value for TIMEOUT") from None
    if value <= 0:
        raise AIError("Invalid value for TIMEOUT")
    return value


def parse_modelexecute(args: Sequence[str]) -> ModelExecute:
    """``AI.MODELEXECUTE key INPUTS n in... OUTPUTS m out... [TIMEOUT ms]`` (args after the name)."""
    if len(args) < 7:
        raise wrong_arity("AI.MODELEXECUTE")
    key = args[0]
    if args[1].upper() != "INPUTS":
        raise AIError("INPUTS not specified")
    n_in = _count(args[2], "Invalid argument for input_count")
    if n_in <= 0:
        raise AIError("Input count must be a positive integer")
    inputs = args[3 : 3 + n_in]
    if len(inputs) < n_in:
        raise AIError(
            "number of input keys to AI.MODELEXECUTE command does not match the number of "
            "given arguments"
        )
    i = 3 + n_in
    if i >= len(args) or args[i].upper() != "OUTPUTS":
        raise AIError("OUTPUTS not specified")
    if i + 1 >= len(args):
        raise AIError("Invalid argument for output_count")
    n_out = _count(args[i + 1], "Invalid argument for output_count")
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
        if args[i].upper() != "TIMEOUT":
            raise AIError(f"Invalid argument: {args[i]}")
        timeout = _parse_timeout(args, i + 1, "No value provided for TIMEOUT")
        if i + 2 < len(args):
            raise AIError(f"Invalid argument: {args[i + 2]}")
    return ModelExecute(key, tuple(inputs), tuple(outputs), timeout)


_SCRIPT_SCOPES = {"KEYS": "keys", "INPUTS": "inputs", "ARGS": "args", "OUTPUTS": "outputs"}
_SCRIPT_COUNT_ERRORS = {
    "KEYS": "Invalid argument for keys count in AI.SCRIPTEXECUTE",
    "ARGS": "Invalid argument for keys count in AI.SCRIPTEXECUTE",
    "INPUTS": "Invalid argument for inputs count in AI.SCRIPTEXECUTE",
    "OUTPUTS": "Invalid argument for outputs count in AI.SCRIPTEXECUTE",
}


def parse_scriptexecute(args: Sequence[str]) -> ScriptExecute:
    """``AI.SCRIPTEXECUTE key fn [KEYS n ...] [INPUTS n ...] [ARGS n ...] [OUTPUTS n ...]
    [TIMEOUT ms]`` (args after the name)."""
    if len(args) < 2:
        raise wrong_arity("AI.SCRIPTEXECUTE")
    key, function = args[0], args[1]
    if len(args) < 3 or args[2].upper() not in ("KEYS", "INPUTS"):
        raise AIError("KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command")
    scopes: dict[str, tuple[str, ...]] = {}
    timeout = None
    i = 2
    while i < len(args):
        word = args[i].upper()
        if word == "TIMEOUT":
            timeout = _parse_timeout(
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
            if word == "KEYS":
                raise AIError("Missing arguments after KEYS keyword")
            raise AIError("Invalid arguments provided to AI.SCRIPTEXECUTE")
        count = _count(args[i + 1], _SCRIPT_COUNT_ERRORS[word])
        if word == "KEYS" and count <= 0:
            raise AIError("Invalid or negative value found in number of KEYS")
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


_PARSERS: dict[str, Callable[[Sequence[str]], Request]] = {
    "AI.MODELEXECUTE": parse_modelexecute,
    "AI.SCRIPTEXECUTE": parse_scriptexecute,
}


def parse_command(command: str | Sequence[str]) -> Request:
    """Parse a queueable RedisAI command (text as typed in redis-cli, or its tokens)."""
    tokens = tokenize(command) if isinstance(command, str) else list(command)
    if not tokens:
        raise AIError("empty command")
    name = tokens[0].upper()
    parser = _PARSERS.get(name)
    if parser is None:
        raise AIError(f"unsupported command in a job: {tokens[0]}")
    return parser(tokens[1:])
