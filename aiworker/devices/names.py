"""RedisAI's device grammar: ``CPU``, ``GPU``, ``CPU:n``, ``GPU:n``, case-insensitive, kept as given."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from aiworker.protocol import messages
from aiworker.protocol.errors import AIError

# RedisAI: "<n> contains digits only, up to 5" (its tests refuse CPU:123456)
_DEVICE = re.compile(r"^(CPU|GPU)(?::(\d{1,5}))?$", re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    """A parsed device string. ``name`` keeps the user's spelling; ``queue`` is the shared form."""

    name: str
    kind: str
    index: int | None

    @property
    def queue(self) -> str:
        """The upper-cased name that picks the job stream (``cpu:1`` and ``CPU:1`` share one)."""
        return self.name.upper()

    @property
    def ordinal(self) -> int:
        """The device number, 0 when none was given."""
        return self.index or 0

    @property
    def is_gpu(self) -> bool:
        return self.kind == "GPU"

    def __str__(self) -> str:
        return self.name


def parse_device(text: str | bytes) -> Device:
    """Parse a device string or raise RedisAI's ``Invalid DEVICE`` error."""
    return _parse(text.decode() if isinstance(text, bytes) else str(text))


@functools.lru_cache(maxsize=256)
def _parse(name: str) -> Device:
    match = _DEVICE.match(name.strip())
    if match is None:
        raise AIError(messages.INVALID_DEVICE)
    index = match.group(2)
    return Device(
        name=name.strip(), kind=match.group(1).upper(), index=int(index) if index else None
    )
