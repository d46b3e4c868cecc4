"""The refusal every framework's check raises, naming what was found."""

from __future__ import annotations

from aiworker.protocol.errors import AIError

_HINT = (
    "reads or writes files or runs code outside the model, so it is refused; the operator may "
    "allow such models with the allow_file_ops setting (see docs/security.md)"
)


def _refuse(framework: str, what: str) -> AIError:
    return AIError(f"{framework}: {what} {_HINT}")
