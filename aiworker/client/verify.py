"""Checks the client runs before storing, where the framework is importable in its process."""

from __future__ import annotations

from collections.abc import Sequence


def check_script_source(source: str, entry_points: Sequence[str]) -> bool:
    """Compile a script and check its entry points where torch is installed, as RedisAI did at
    SCRIPTSTORE (raising ``AIError`` with its messages). False when torch is missing here: the
    worker then reports the same errors when it first loads the script."""
    try:
        from aiworker.backends import torch_script
    except ImportError:
        return False
    torch_script.compile_script(source, entry_points)
    return True
