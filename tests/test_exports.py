"""aiworker.__all__ stays honest (as httpx's test_exported_members.py)."""

from __future__ import annotations

import inspect

import redis

import aiworker


def test_all_names_exist() -> None:
    assert len(aiworker.__all__) == len(set(aiworker.__all__))
    for name in aiworker.__all__:
        assert hasattr(aiworker, name), name


def test_every_public_class_and_function_is_exported() -> None:
    public = {
        name
        for name, value in vars(aiworker).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", "").startswith("aiworker")
    }
    assert public
    assert public <= set(aiworker.__all__), public - set(aiworker.__all__)


def test_exported_members_belong_to_aiworker() -> None:
    for name in aiworker.__all__:
        if name == "__version__":
            continue
        value = getattr(aiworker, name)
        assert value.__module__.startswith("aiworker."), name
        assert value.__module__.split(".")[1] != "_", name


def test_version() -> None:
    assert isinstance(aiworker.__version__, str)
    assert aiworker.__version__.count(".") >= 1


def test_exception_tree() -> None:
    assert issubclass(aiworker.AIError, redis.exceptions.ResponseError)
    assert issubclass(aiworker.AIError, aiworker.AIWorkerError)
    for cls in (aiworker.WrongTypeError, aiworker.JobFailed, aiworker.JobTimedOut):
        assert issubclass(cls, aiworker.AIError)
    for cls in (aiworker.ConfigError, aiworker.BackendUnavailable):
        assert issubclass(cls, aiworker.AIWorkerError)
        assert not issubclass(cls, redis.exceptions.ResponseError)
    assert issubclass(aiworker.Client, redis.Redis)


def test_package_is_typed() -> None:
    from pathlib import Path

    assert (Path(aiworker.__file__).parent / "py.typed").exists()
