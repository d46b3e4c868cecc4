"""Backend plugins: ``base`` holds the interface and registry, one module per framework."""

from aiworker.backends.base import Backend, BackendOptions, LoadedModel, ModelSpec, Registry

__all__ = ["Backend", "BackendOptions", "LoadedModel", "ModelSpec", "Registry"]
