"""Backend names: the built-in ones and those third-party packages register, known without
importing a framework (the parser and the client check names with these). Pure code, except that
reading a plugin's ``requires_io_names`` imports that plugin's module."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "aiworker.backends"

# name -> ("module:Class", pip extra). The extra is named in the error when the import fails.
BUILTIN_BACKENDS: dict[str, tuple[str, str]] = {
    "TORCH": ("aiworker.backends.torch:TorchBackend", "torch"),
    "TF": ("aiworker.backends.tf:TFBackend", "tf"),
    "TFLITE": ("aiworker.backends.tflite:TFLiteBackend", "tflite"),
    "ONNX": ("aiworker.backends.onnx:ONNXBackend", "onnx"),
    "STUB": ("aiworker.backends.stub:StubBackend", ""),
}


def plugin_targets() -> dict[str, str]:
    """Backends installed packages register: name -> "module:Class"."""
    return {ep.name.upper(): ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_backends() -> list[str]:
    """Names of every backend that could be loaded: built-ins plus installed plugins."""
    return sorted(set(BUILTIN_BACKENDS) | set(plugin_targets()))


def io_name_backends() -> list[str]:
    """Backends whose models are stored with INPUTS/OUTPUTS names (RedisAI: TF only; a plugin
    says so with its class attribute ``requires_io_names``)."""
    names = ["TF"]
    for name, target in plugin_targets().items():
        module_name, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            continue
        if getattr(cls, "requires_io_names", False):
            names.append(name)
    return names


ZIP_MAGIC = b"PK\x03\x04"


def is_zip(blob: bytes | bytearray | memoryview) -> bool:
    """Whether a model blob is a zip archive (how a TF SavedModel directory is stored)."""
    return bytes(memoryview(blob).cast("B")[: len(ZIP_MAGIC)]) == ZIP_MAGIC


def io_names_optional(backend: str, blob: bytes | bytearray | memoryview) -> bool:
    """Whether a model of an INPUTS/OUTPUTS backend may be stored without the names.

    RedisAI's rule makes them mandatory for TF, where they name graph nodes. A zipped SavedModel
    carries a serving signature that names its inputs and outputs, so there they are optional (and,
    when given, pick and order the signature's inputs and outputs).
    """
    return backend.upper() == "TF" and is_zip(blob)
