"""The backend registry: lazy imports, --preload, and third-party backends from entry points.

The ECHO plugin (tests/plugins/echo, a regular package with an ``aiworker.backends`` entry point)
is installed for this test run only: its module plus a ``.dist-info`` with the entry point in a
temporary directory on the import path (of this process and of spawned workers). That is what
``pip install`` leaves behind, without touching the shared environment.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import spawn_worker, stub_blob, wait_until

from aiworker import AIError, BackendUnavailable, Client, Settings, Worker
from aiworker.backends import base
from aiworker.backends.base import BackendOptions, Registry
from aiworker.cli import main, worker_statuses
from aiworker.protocol import backend_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLUGIN = Path(__file__).parent / "plugins" / "echo"


def install_plugin(target: Path) -> None:
    """Lay the plugin out as an installed distribution: module + dist-info with entry points."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    shutil.copy(PLUGIN / "aiworker_echo_backend.py", target)
    dist_info = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in entries.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    target = tmp_path_factory.mktemp("site")
    install_plugin(target)
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("aiworker_echo_backend", None)


def test_plugin_is_known(plugin_path: Path) -> None:
    assert "ECHO" in backend_names.known_backends()
    assert "ECHO" not in backend_names.io_name_backends()


def test_plugin_model_through_worker(plugin_path: Path, client: Client, worker: Worker) -> None:
    client.modelstore("m", "echo", "CPU", b"3")
    assert client.modelget("m", meta_only=True)["backend"] == "ECHO"
    client.tensorset("a", np.array([1, 2], dtype=np.int32))
    client.tensorset("b", np.array([0.5], dtype=np.float32))
    assert client.modelexecute("m", ["a", "b"], ["x", "y"]) == "OK"
    assert client.tensorget("x").tolist() == [3, 6]
    assert client.tensorget("y").tolist() == [1.5]
    assert worker.registry.loaded()["ECHO"] == "echo 1.0"


def test_plugin_in_a_worker_process(plugin_path: Path, client: Client, redis_server) -> None:  # type: ignore[no-untyped-def]
    """A separate worker process finds the plugin by entry point and preloads it."""
    path = os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = spawn_worker(
        redis_server.url, "--preload", "ECHO", PYTHONPATH=path, AIWORKER_BLOCK_MS="100"
    )
    try:
        wait_until(lambda: worker_statuses(client), timeout=30)
        assert worker_statuses(client)[0]["backends"] == {"ECHO": "echo 1.0"}  # before any job
        result = CliRunner().invoke(main, ["info", "--backends", "--redis-url", redis_server.url])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {"ECHO": "echo 1.0"}
        client.modelstore("m", "ECHO", "CPU", b"2")
        client.tensorset("a", np.array([21], dtype=np.int64))
        client.modelexecute("m", ["a"], ["b"])
        assert client.tensorget("b").tolist() == [42]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_unknown_backend(client: Client) -> None:
    with pytest.raises(ValueError, match=r"^Backend not allowed\. Use any from \{"):  # redisai-py's
        client.modelstore("m", "CAFFE", "CPU", b"1")
    with pytest.raises(AIError, match=r"^unsupported backend$"):  # RedisAI's
        client.loadbackend("CAFFE", "/path/to/redisai_caffe.so")
    with pytest.raises(AIError, match=r"^unsupported backend$"):
        Registry().get("CAFFE")


def test_lazy_import_and_preload(client: Client, settings: Settings) -> None:
    w = Worker(settings).start()
    try:
        assert w.registry.loaded() == {}  # nothing imported until a model needs it
        client.modelstore("m", "STUB", "CPU", stub_blob("add"))
        client.tensorset("a", [1, 2], dtype="INT32")
        client.modelexecute("m", ["a", "a"], ["c"])
        assert w.registry.loaded() == {"STUB": "1"}
    finally:
        w.stop(timeout=10)
    w = Worker(settings.replace(preload=("stub", "ONNX"))).start()
    try:
        assert set(w.registry.loaded()) == {"STUB", "ONNX"}
    finally:
        w.stop(timeout=10)


def test_missing_framework_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(base.BUILTIN_BACKENDS, "FAKE", ("aiworker_no_such_module:X", "fake"))
    with pytest.raises(BackendUnavailable, match=r"pip install 'aiworker\[fake\]'"):
        Registry(BackendOptions()).preload(["FAKE"])
