"""Host memory of TORCH runs: what is copied between a Redis reply and the device, and the host
buffers (``LoadedModel.host_buffer``) a caller fills with a batch's rows.

On the CPU the copies are counted with a module that returns its inputs: an output that shares
memory with its input was not copied on the way in or out. The GPU tests need a CUDA device and
are skipped without one (saying so); their paths are kept small so that the CPU runs here cover
everything else.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence

import numpy as np
import pytest

from aiworker.backends.base import BackendOptions, ModelSpec
from aiworker.backends.stub import StubBackend
from aiworker.devices import parse_device

torch = pytest.importorskip("torch")
from aiworker.backends.torch import TorchBackend, TorchModel  # noqa: E402

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU present: torch sees no CUDA device on this host"
)


class Echo(torch.nn.Module):  # type: ignore[misc]
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a, b


class AddsInPlace(torch.nn.Module):  # type: ignore[misc]
    """Writes into its input, as a TorchScript module may."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.add_(1)


def load(module: torch.nn.Module, device: str = "CPU") -> TorchModel:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), buffer)
    model = TorchBackend(BackendOptions()).load(
        buffer.getvalue(), ModelSpec("m", parse_device(device))
    )
    assert isinstance(model, TorchModel)
    return model


def from_reply(values: Sequence[float]) -> np.ndarray:
    """A tensor as the worker reads it: a read-only array over the reply's bytes."""
    return np.frombuffer(np.asarray(values, np.float32).tobytes(), np.float32)


def host_bytes_copied(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> int:
    """Bytes copied on the host between each input and the output the Echo module returned."""
    return sum(x.nbytes for x, y in zip(inputs, outputs, strict=True) if not np.shares_memory(x, y))


def test_a_reply_is_copied_once_on_the_cpu() -> None:
    model = load(Echo())
    inputs = [from_reply([1, 2, 3]), from_reply([4, 5, 6])]
    outputs = model.run(inputs)
    assert [y.tolist() for y in outputs] == [[1, 2, 3], [4, 5, 6]]
    # one copy each (a read-only reply cannot be handed to TorchScript), none on the way out
    assert host_bytes_copied(inputs, outputs) == 24


def test_a_host_buffer_is_used_in_place_on_the_cpu() -> None:
    """The batch the caller wrote into host buffers reaches the module and comes back without a
    single host copy; a view of a buffer (the batch's first rows) counts as the buffer."""
    model = load(Echo())
    a, b = model.host_buffer((4, 2), np.float32), model.host_buffer((4, 2), "float32")
    assert a.shape == (4, 2) and a.dtype == np.float32 and a.flags.writeable
    a[:] = [[1, 2], [3, 4], [0, 0], [0, 0]]  # two rows and their padding
    b[:] = 7
    outputs = model.run([a, b])
    assert host_bytes_copied([a, b], outputs) == 0
    assert outputs[0].tolist() == [[1, 2], [3, 4], [0, 0], [0, 0]]
    assert host_bytes_copied([a[:2], b[:2]], model.run([a[:2], b[:2]])) == 0
    assert not np.shares_memory(model.host_buffer((4, 2), np.float32), a), "fresh per call"


def test_arrays_a_caller_keeps_are_never_written_by_the_module() -> None:
    """Only host buffers are given away: a reply, or another run's output that a DAG still
    needs, is copied before a module that writes into its input runs."""
    model = load(AddsInPlace())
    reply = from_reply([1, 2])
    kept = np.array([1.0, 2.0], np.float32)  # writable, like an earlier op's output
    assert model.run([reply])[0].tolist() == [2, 3] and reply.tolist() == [1, 2]
    assert model.run([kept])[0].tolist() == [2, 3] and kept.tolist() == [1, 2]
    given = model.host_buffer((2,), np.float32)
    given[:] = [1, 2]
    assert model.run([given])[0].tolist() == [2, 3]  # in place: the caller gave it away


def test_batches_run_at_their_exact_size_on_the_cpu() -> None:
    """Padding pays on a GPU only (bench/README.md): on the CPU it would only add rows."""
    assert load(Echo()).batch_sizes(32) is None


def test_other_backends_hand_out_plain_arrays() -> None:
    model = StubBackend(BackendOptions()).load(
        b'{"op": "identity"}', ModelSpec("m", parse_device("CPU"))
    )
    buffer = model.host_buffer([3, 2], np.int64)
    assert isinstance(buffer, np.ndarray) and buffer.shape == (3, 2) and buffer.dtype == np.int64
    buffer[:] = 5
    assert model.run([buffer])[0].tolist() == [[5, 5]] * 3


@needs_gpu
def test_gpu_host_buffers_are_page_locked_and_outputs_come_back_in_page_locked_memory() -> None:
    model = load(Echo(), "GPU")
    assert model.batch_sizes(32) == [1, 2, 4, 8, 16, 32]
    a = model.host_buffer((2, 3), np.float32)
    assert torch.from_numpy(a).is_pinned()
    a[:] = 1.5
    reply = from_reply([1, 2, 3, 4, 5, 6]).reshape(2, 3)  # pageable: staged through pinned memory
    outputs = model.run([a, reply])
    assert outputs[0].tolist() == [[1.5] * 3] * 2 and outputs[1].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert all(torch.from_numpy(y).is_pinned() for y in outputs)
    assert model.run([outputs[0], outputs[1]])[1].tolist() == [[1, 2, 3], [4, 5, 6]]
    # two large replies staged one after the other: the first's staging memory must not be
    # handed out for the second while its copy is in flight
    first, second = (from_reply(np.full(1 << 22, v, np.float32)) for v in (1.0, 2.0))
    out = model.run([first, second])
    assert out[0].min() == out[0].max() == 1.0 and out[1].min() == out[1].max() == 2.0


@needs_gpu
def test_gpu_runs_on_several_threads_each_wait_for_their_own_results() -> None:
    """Each thread runs on its own CUDA stream: non-blocking copies must still be complete when
    its run returns."""
    model = load(AddsInPlace(), "GPU")
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            for i in range(50):
                x = model.host_buffer((256, 256), np.float32)
                x[:] = n * 1000 + i
                y = model.run([x])[0]
                assert float(y.min()) == float(y.max()) == n * 1000 + i + 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
