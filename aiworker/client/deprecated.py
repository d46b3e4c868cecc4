"""redisai-py 1.2's deprecation warnings, word for word (it used the ``Deprecated`` package)."""

from __future__ import annotations

import warnings


def deprecated_call(method: str, reason: str, stacklevel: int = 3) -> None:
    """Warn that ``method`` is deprecated: ``DeprecationWarning`` attributed to the caller."""
    warnings.warn(
        f"Call to deprecated method {method}. ({reason}) -- Deprecated since version 1.2.0.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
