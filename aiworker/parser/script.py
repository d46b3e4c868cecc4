"""AI.SCRIPTSTORE, the deprecated AI.SCRIPTSET, AI.SCRIPTGET, AI.SCRIPTDEL and AI._SCRIPTSCAN."""

from __future__ import annotations

from collections.abc import Sequence

from aiworker.parser.commands import ScriptDel, ScriptGet, ScriptScan, ScriptStore
from aiworker.parser.common import is_word, parse_int, wrong_arity
from aiworker.protocol.errors import AIError

MISSING_ENTRY_POINTS = "Insufficient arguments, missing script entry points"
MISSING_SOURCE = "Insufficient arguments, missing script SOURCE"


def parse_scriptstore(args: Sequence[str]) -> ScriptStore:
    """``AI.SCRIPTSTORE key device [TAG tag] ENTRY_POINTS n fn... SOURCE script``."""
    if len(args) < 7:
        raise wrong_arity("AI.SCRIPTSTORE")
    key, device, i, tag = args[0], args[1], 2, ""
    if is_word(args[i], "TAG"):
        tag, i = args[i + 1], i + 2
    if i >= len(args) or not is_word(args[i], "ENTRY_POINTS") or i + 1 >= len(args):
        raise AIError(MISSING_ENTRY_POINTS)
    count = parse_int(
        args[i + 1], "Non numeric entry points number provided to AI.SCRIPTSTORE command"
    )
    names = tuple(args[i + 2 : i + 2 + max(count, 0)])
    if count < 0 or len(names) < count:
        raise AIError(MISSING_ENTRY_POINTS)
    i += 2 + count
    if i + 1 >= len(args) or not is_word(args[i], "SOURCE"):
        raise AIError(MISSING_SOURCE)
    return ScriptStore(key, device, args[i + 1], entry_points=names, tag=tag)


def parse_scriptset(args: Sequence[str]) -> ScriptStore:
    """Deprecated ``AI.SCRIPTSET key device [TAG tag] SOURCE script`` (no entry points)."""
    if len(args) not in (4, 6):
        raise wrong_arity("AI.SCRIPTSET")
    key, device, i, tag = args[0], args[1], 2, ""
    if is_word(args[i], "TAG"):
        tag, i = args[i + 1], i + 2
    if i + 1 >= len(args) or not is_word(args[i], "SOURCE"):
        raise AIError(MISSING_SOURCE)
    return ScriptStore(key, device, args[i + 1], tag=tag, deprecated=True)


def parse_scriptget(args: Sequence[str]) -> ScriptGet:
    """``AI.SCRIPTGET key [META] [SOURCE]``: one of them alone, or both (the default)."""
    if not 1 <= len(args) <= 3:
        raise wrong_arity("AI.SCRIPTGET")
    words = {a.upper() for a in args[1:]}
    meta, source = "META" in words, "SOURCE" in words
    if not meta and not source:
        meta = source = True
    return ScriptGet(args[0], meta=meta, source=source)


def parse_scriptdel(args: Sequence[str]) -> ScriptDel:
    if len(args) != 1:
        raise wrong_arity("AI.SCRIPTDEL")
    return ScriptDel(args[0])


def parse_scriptscan(args: Sequence[str]) -> ScriptScan:
    if args:
        raise wrong_arity("AI._SCRIPTSCAN")
    return ScriptScan()
