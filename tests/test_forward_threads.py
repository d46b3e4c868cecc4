"""CPU forwards off the lane threads: the forward threads, and which TORCH runs go there."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from conftest import torch_blob

from aiworker.backends import forward_threads
from aiworker.backends.base import BackendOptions, ModelSpec
from aiworker.backends.forward_threads import ForwardThreads
from aiworker.devices import parse_device

torch = pytest.importorskip("torch")


def hand_offs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions handed to the process's forward threads from now on."""
    handed: list[str] = []
    real = forward_threads.FORWARD_THREADS.run

    def recorded(function: Any, *args: Any) -> Any:
        handed.append(function.__name__)
        return real(function, *args)

    monkeypatch.setattr(forward_threads.FORWARD_THREADS, "run", recorded)
    return handed


def test_calls_one_after_another_share_one_thread_not_the_callers() -> None:
    threads = ForwardThreads()
    names = [threads.run(lambda: threading.current_thread()) for _ in range(5)]
    assert len(set(names)) == 1 and names[0] is not threading.current_thread()
    assert names[0].daemon


def test_a_call_raises_its_own_exception_in_the_caller() -> None:
    threads = ForwardThreads()

    def fails(text: str) -> None:
        raise KeyError(text)

    with pytest.raises(KeyError, match="boom"):
        threads.run(fails, "boom")
    assert threads.run(lambda a, b: a + b, 2, 3) == 5  # the thread lives on


def test_calls_in_flight_together_get_a_thread_each() -> None:
    threads = ForwardThreads()
    inside = threading.Barrier(3, timeout=10)
    seen: list[threading.Thread] = []

    def call() -> None:
        def body() -> None:
            seen.append(threading.current_thread())
            inside.wait()  # both calls run at once, or this times out

        threads.run(body)

    callers = [threading.Thread(target=call) for _ in range(2)]
    for caller in callers:
        caller.start()
    inside.wait()
    for caller in callers:
        caller.join(10)
    assert len(set(seen)) == 2
    assert len(threads._idle) == 2  # both kept for later calls


def test_torch_cpu_loads_and_long_forwards_run_on_the_forward_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CPU model is loaded there, its first forward and any forward that took long run there;
    a forward that was short runs on the caller's thread (a hand-off would cost more)."""
    from aiworker.backends import torch as torch_backend

    handed = hand_offs(monkeypatch)
    backend = torch_backend.TorchBackend(BackendOptions())
    model = backend.load(torch_blob(), ModelSpec("m", parse_device("CPU")))
    assert handed == ["_load"]
    ones = [np.ones(2, np.float32), np.ones(2, np.float32)]
    assert model.run(ones)[0].tolist() == [2.0, 2.0]
    assert handed == ["_load", "_forward"]  # the first: its time is not known yet
    monkeypatch.setattr(forward_threads, "HAND_OFF_S", 60.0)  # every forward is "short"
    model.run(ones)
    assert handed == ["_load", "_forward"]  # on the calling thread
    model._forward_s = 61.0  # type: ignore[attr-defined] # as if the last forward took longer
    assert model.run(ones)[0].tolist() == [2.0, 2.0]
    assert handed == ["_load", "_forward", "_forward"]


def test_a_call_made_on_a_forward_thread_runs_right_there() -> None:
    """A script's forward that runs a stored model: no second hand-off (no second pool, and no
    thread waiting for itself)."""
    threads = ForwardThreads()
    outer, inner = threads.run(
        lambda: (threading.current_thread(), threads.run(threading.current_thread))
    )
    assert outer is inner and outer is not threading.current_thread()


def test_torch_cpu_script_calls_that_took_long_run_on_the_forward_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiworker.backends.torch import TorchBackend

    handed = hand_offs(monkeypatch)
    source = "def twice(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0] * 2\n"
    script = TorchBackend(BackendOptions()).load_script(source, ["twice"], parse_device("CPU"))
    ones = [np.ones(3, np.float32)]
    assert script.call("twice", ones, [], [], 1)[0].tolist() == [2.0, 2.0, 2.0]  # type: ignore[attr-defined]
    assert handed == ["_call"]  # the first: its time is not known yet
    monkeypatch.setattr(forward_threads, "HAND_OFF_S", 60.0)
    script.call("twice", ones, [], [], 1)  # type: ignore[attr-defined]
    assert handed == ["_call"]  # short: on the calling thread


def test_openmp_spin_shortened_unless_the_environment_chose() -> None:
    env: dict[str, str] = {}
    assert forward_threads.shorten_openmp_spin(env)
    assert env == {"GOMP_SPINCOUNT": forward_threads.WORKER_SPIN_COUNT}
    for name, value in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "300000"),
                        ("KMP_BLOCKTIME", "200")]:  # fmt: skip
        chosen = {name: value}
        assert not forward_threads.shorten_openmp_spin(chosen) and chosen == {name: value}


WORKER_PROCESS = """
import os, signal, sys, threading
from aiworker import Settings, Worker
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
Worker(Settings(redis_url=sys.argv[1])).run_forever()
print(os.environ.get("GOMP_SPINCOUNT"))
"""


@pytest.mark.parametrize(("given", "seen"), [(None, "10000"), ("300000", "300000")])
def test_a_worker_process_shortens_the_spin_at_start(
    redis_server: Any, given: str | None, seen: str
) -> None:
    """``Worker.run_forever`` (the process is the worker's) sets it before backends load."""
    import subprocess
    import sys

    from conftest import worker_env

    env = worker_env(unset=forward_threads.OPENMP_WAIT_SETTINGS)
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    done = subprocess.run(
        [sys.executable, "-c", WORKER_PROCESS, redis_server.url],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == seen
