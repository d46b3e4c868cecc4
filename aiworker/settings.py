"""One settings object, layered: defaults <- config file <- ``AIWORKER_*`` env <- explicit overrides.

Names follow RedisAI's (THREADS_PER_QUEUE, MODEL_CHUNK_SIZE, ...) in lower case; the environment
variable of a setting is ``AIWORKER_`` plus its upper-cased name. List settings (devices, preload)
are names separated by commas and/or whitespace (``split_list``). Nothing is read at import time.

Settings stored in Redis (AI.CONFIG) come from whoever may write one hash, so a worker reads only
AI.CONFIG's own tuning names from it, each checked (``settings_from_redis_config``); limits,
connection settings, the prefix, TLS and recovery timings come only from the operator.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from aiworker.devices.names import parse_device
from aiworker.protocol.errors import AIError, ConfigError
from aiworker.protocol.keys import DEFAULT_PREFIX
from aiworker.protocol.text import text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "AIWORKER_"


@dataclass(frozen=True)
class Settings:
    """Every aiworker setting. See ``config/aiworker.toml`` for what each one does."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = DEFAULT_PREFIX
    devices: tuple[str, ...] = ("CPU",)
    threads_per_queue: int = 1
    model_chunk_size: int = 511 * 1024 * 1024
    model_execution_timeout: int = 0
    inter_op_parallelism: int = 0
    intra_op_parallelism: int = 0
    backend_memory_limit: int = 0
    # RedisAI's BACKENDSPATH, accepted for compatibility only: backends here are Python packages
    # (the ``aiworker.backends`` entry points), so nothing reads it; its default ("": nil) is what
    # AI.CONFIG GET BACKENDSPATH answers until a client stores one in Redis
    backends_path: str = ""
    preload: tuple[str, ...] = ()
    reply_ttl: int = 300
    visibility_timeout: float = 30.0
    max_deliveries: int = 5
    model_cache_size: int = 32
    max_tensor_bytes: int = 512 << 20
    block_ms: int = 1000
    metrics_port: int = 0
    # hardening: recovery, limits, observability, security (see config/aiworker.toml)
    dead_letter_maxlen: int = 10_000
    drain_timeout: float = 30.0
    model_cache_bytes: int = 0
    max_model_bytes: int = 1 << 31
    max_job_bytes: int = 1 << 31
    max_job_keys: int = 1024
    hung_job_timeout: float = 0.0
    socket_timeout: float = 0.0
    metrics_addr: str = "0.0.0.0"
    log_format: str = "text"
    tls_ca_cert: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # models and scripts are code: see docs/security.md
    allow_file_ops: bool = False
    max_model_extract_bytes: int = 4 << 30
    # Redis Cluster (README "Redis Cluster"): streams per device queue; WAIT after completions
    queue_partitions: int = 1
    wait_replicas: int = 0
    wait_replicas_timeout: int = 1000
    # autobatching: what may wait in a device's batcher before its oldest group runs as it is
    max_batch_waiting: int = 4096
    max_batch_waiting_bytes: int = 1 << 30
    # overload: the most entries a device queue's stream may hold (0: no limit); README "Overload"
    max_queue_length: int = 0

    def __post_init__(self) -> None:
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if not low <= value or (high is not None and not value <= high):  # NaN too
                within = f"from {low} to {high}" if high is not None else f"{low} or more"
                raise ConfigError(f"setting {name}: {value!r} is out of range ({within})")
        for name in _ABOVE_ZERO:
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"setting {name}: {value!r} is out of range (more than 0)")

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["redis_url"] = hide_password(self.redis_url)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (values coerced like config-file values)."""
        return dataclasses.replace(self, **_coerce_all(changes))

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        base: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Defaults, ``base`` (e.g. settings stored in Redis), the TOML file, ``AIWORKER_*``
        variables, then non-None overrides: each layer wins over the ones before it."""
        values: dict[str, Any] = dict(base or {})
        env = os.environ if env is None else env
        path = config_file or env.get(ENV_PREFIX + "CONFIG")
        if path:
            values.update(read_config_file(path))
        values.update(from_env(env))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**_coerce_all(values))


_FIELD_TYPES = {f.name: f.type for f in fields(Settings)}

# Settings whose values outside a range are no configuration at all -> (smallest, largest or
# None). A worker with threads_per_queue 0 registered as live and never read a job; a port
# beyond 65535 failed deep inside the socket layer.
_RANGES: dict[str, tuple[int, int | None]] = {
    "threads_per_queue": (1, None),
    "queue_partitions": (1, 1024),
    "metrics_port": (0, 65535),
    "wait_replicas": (0, None),
    "max_queue_length": (0, None),
    # a negative socket timeout was a traceback at the first connection; a negative reply_ttl
    # left every reply list without expiry, as 0 does
    "socket_timeout": (0, None),
    "reply_ttl": (0, None),
}
# Counts, sizes and times whose 0 means "none" or "no limit", and a negative value nothing
# (max_tensor_bytes -1 was no limit at all, max_deliveries -1 dead-lettered at once).
_RANGES |= dict.fromkeys(
    (
        "model_execution_timeout", "inter_op_parallelism", "intra_op_parallelism",
        "backend_memory_limit", "max_deliveries", "model_cache_size", "max_tensor_bytes",
        "dead_letter_maxlen", "drain_timeout", "model_cache_bytes", "max_model_bytes",
        "max_job_bytes", "max_job_keys", "hung_job_timeout", "max_model_extract_bytes",
        "wait_replicas_timeout", "max_batch_waiting", "max_batch_waiting_bytes",
    ),
    (0, None),
)  # fmt: skip
# Settings that must be more than 0. A visibility_timeout of 0 or less made a lone worker
# reclaim the entries it was running and dead-letter them as delivered too often.
_ABOVE_ZERO = ("visibility_timeout",)


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES.get(name)
    if kind is None:
        raise ConfigError(f"unknown setting {name!r}")
    try:
        if kind == "bool":
            return _boolean(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)  # int() would make 1.7 or true a 1
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "tuple[str, ...]":
            names = split_list(value)
        else:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}: invalid value {value!r}") from None
    if name == "devices":
        _check_devices(names)
        first: dict[str, str] = {}
        for each in names:  # "CPU,cpu": one queue, served by one lane
            first.setdefault(each.upper(), each)
        names = tuple(first.values())
    return names


_LIST_SEPARATOR = re.compile(r"[\s,]+")


def split_list(value: str | Iterable[Any]) -> tuple[str, ...]:
    """The names of a list setting, separated by commas and/or whitespace ("CPU,GPU:1",
    "CPU GPU:1", "CPU, GPU:1"). Items of a list are split alike: the CLI, which gets a repeated
    flag's values or an environment variable split on whitespace, and ``Settings`` read lists
    the same way."""
    items = [value] if isinstance(value, str) else value
    return tuple(name for item in items for name in _LIST_SEPARATOR.split(str(item)) if name)


def _check_devices(names: tuple[str, ...]) -> None:
    # A worker would refuse them at start with RedisAI's bare "Invalid DEVICE": name the culprit.
    if not names:  # "," or "": a worker serving nothing
        raise ConfigError("setting devices: no device named (CPU, GPU, CPU:<n> or GPU:<n>)")
    for name in names:
        try:
            parse_device(name)
        except AIError:
            raise ConfigError(
                f"setting devices: invalid device {name!r} (CPU, GPU, CPU:<n> or GPU:<n>)"
            ) from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(value)


def _coerce_all(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name.lower(): _coerce(name.lower(), v) for name, v in values.items()}


def from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Settings named by ``AIWORKER_<NAME>`` variables."""
    return {
        name: env[ENV_PREFIX + name.upper()]
        for name in _FIELD_TYPES
        if ENV_PREFIX + name.upper() in env
    }


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file (top-level keys or an ``[aiworker]`` table)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"cannot read config file {path}: {reason}") from exc
    table = data.get("aiworker", data)
    return {k.lower(): v for k, v in table.items()}


def hide_password(url: str) -> str:
    """``url`` with its password shown as ``***``, where redis-py reads one: in the user part
    and in the query (``?password=``, the usual place in a ``unix://`` URL)."""
    password = urlsplit(url).password
    head, mark, query = url.partition("?")
    if password is not None:
        head = head.replace(":" + password + "@", ":***@", 1)
    if query:
        query = "&".join(_hide_value(pair) for pair in query.split("&"))
    return head + mark + query


def _hide_value(pair: str) -> str:
    name, equals, value = pair.partition("=")
    return name + equals + "***" if unquote(name) == "password" and value else pair


# AI.CONFIG names a worker reads from Redis -> (Settings field, smallest, largest accepted value).
# The bounds keep a value someone wrote into the shared hash from starving or swamping a worker.
REDIS_CONFIG: dict[str, tuple[str, int, int]] = {
    "THREADS_PER_QUEUE": ("threads_per_queue", 1, 256),
    "MODEL_CHUNK_SIZE": ("model_chunk_size", 1, 512 << 20),  # Redis' default proto-max-bulk-len
    "MODEL_EXECUTION_TIMEOUT": ("model_execution_timeout", 0, 24 * 3600 * 1000),  # ms
    "INTER_OP_PARALLELISM": ("inter_op_parallelism", 0, 1024),
    "INTRA_OP_PARALLELISM": ("intra_op_parallelism", 0, 1024),
    "BACKEND_MEMORY_LIMIT": ("backend_memory_limit", 0, 1 << 24),  # MB
}
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,20}")


def whole_number(value: str, low: int, high: int | None = None) -> int | None:
    """``value`` as a whole number from ``low`` to ``high`` (None: no largest), else None."""
    value = value.strip()
    if not _WHOLE_NUMBER.fullmatch(value):
        return None
    number = int(value)
    return number if low <= number and (high is None or number <= high) else None


def settings_from_redis_config(fields: Mapping[Any, Any]) -> tuple[dict[str, int], list[str]]:
    """The settings a worker adopts from the shared config hash, and a warning per field ignored.

    Only AI.CONFIG's tuning names are read, each a whole number within ``REDIS_CONFIG``'s bounds.
    BACKENDSPATH names code to load, so it is never taken from Redis; neither is anything else
    (limits, connection, prefix, TLS, recovery timings): those are the operator's, set with flags,
    ``AIWORKER_*`` variables or the config file.
    """
    values: dict[str, int] = {}
    warnings: list[str] = []
    for raw_name, raw_value in fields.items():
        written = text(raw_name)
        name = written.strip().upper()
        if name == "BACKENDSPATH":
            warnings.append(
                f"ignoring {written!r} from the shared config hash: backends are Python "
                "packages (entry points of 'aiworker.backends'), no path is loaded"
            )
            continue
        if name not in REDIS_CONFIG:
            warnings.append(
                f"ignoring {written!r} from the shared config hash: only AI.CONFIG settings are "
                "read from Redis; the operator sets the others (flags, AIWORKER_* or the config "
                "file)"
            )
            continue
        field_name, low, high = REDIS_CONFIG[name]
        value_text = text(raw_value).strip()
        number = whole_number(value_text, low, high)
        if number is None:
            warnings.append(
                f"ignoring {written!r} = {value_text[:40]!r} from the shared config hash: not a whole "
                f"number from {low} to {high}"
            )
            continue
        values[field_name] = number
    return values, warnings
