"""TORCH backend: TorchScript modules through a worker, errors, devices and settings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import store_unchecked, torch_blob

from aiworker import AIError, Client, JobFailed, Settings, Worker
from aiworker.backends import util
from aiworker.backends.base import BackendOptions, ModelSpec
from aiworker.devices import gpu_count, parse_device

torch = pytest.importorskip("torch")


def set_ab(client: Client) -> None:
    client.tensorset("a", np.array([[2, 3], [2, 3]], dtype=np.float32))
    client.tensorset("b", np.array([[2, 3], [2, 3]], dtype=np.float32))


def scripted_blob(module: object) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def test_torchscript_add(client: Client, worker: Worker) -> None:
    """RedisAI's pt-minimal test: [[2, 3], [2, 3]] + itself."""
    client.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    set_ab(client)
    assert client.modelexecute("m", ["a", "b"], ["c"]) == "OK"
    assert client.tensorget("c").tolist() == [[4, 6], [4, 6]]
    info = client.infoget("m")
    assert (info["backend"], info["calls"], info["samples"], info["errors"]) == ("TORCH", 1, 2, 0)


def test_input_count_from_schema(client: Client, worker: Worker) -> None:
    client.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    set_ab(client)
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["a", "b", "a"], ["c"])
    assert str(info.value) == "Number of keys given as INPUTS here does not match model definition"


def test_input_defaulting_to_none_may_be_left_out(client: Client, worker: Worker) -> None:
    """An ``Optional[Tensor] = None`` argument has a default like any other: a job may give
    fewer inputs, down to the arguments without one."""

    class Bias(torch.nn.Module):  # type: ignore[misc]
        def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            return a * 10 if b is None else a + b

    client.modelstore("m", "TORCH", "CPU", scripted_blob(Bias()))
    set_ab(client)
    client.modelexecute("m", ["a"], ["c"])
    assert client.tensorget("c").tolist() == [[20, 30], [20, 30]]
    client.modelexecute("m", ["a", "b"], ["c"])
    assert client.tensorget("c").tolist() == [[4, 6], [4, 6]]
    with pytest.raises(JobFailed, match="Number of keys given as INPUTS"):
        client.modelexecute("m", ["a", "b", "a"], ["c"])


def test_runtime_error_is_the_error_line(client: Client, worker: Worker) -> None:
    client.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    client.tensorset("a", np.ones(2, dtype=np.float32))
    client.tensorset("b", np.ones(3, dtype=np.float32))
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["a", "b"], ["c"])
    assert str(info.value) == (
        "The size of tensor a (2) must match the size of tensor b (3) at non-singleton dimension 0"
    )


def test_raise_and_assert_are_the_error_line(client: Client, worker: Worker) -> None:
    """A ``raise`` or ``assert`` in TorchScript (torch.jit.Error, no RuntimeError) answers with
    its message, as an op's failure does, in a model and in a script."""

    class Refuses(torch.nn.Module):  # type: ignore[misc]
        def forward(self, a: torch.Tensor) -> torch.Tensor:
            if bool(a.sum() > 0):
                raise ValueError("input must not be positive")
            return a

    client.modelstore("m", "TORCH", "CPU", scripted_blob(Refuses()))
    source = (
        "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
        "    assert bool(tensors[0].sum() < 0), 'input must not be positive'\n"
        "    return tensors[0]\n"
    )
    client.scriptstore("s", "CPU", source, entry_points=["f"])
    client.tensorset("a", np.ones(2, dtype=np.float32))
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["a"], ["c"])
    assert str(info.value) == "input must not be positive"
    with pytest.raises(JobFailed) as info:
        client.scriptexecute("s", "f", inputs=["a"], outputs=["c"])
    assert str(info.value) == "input must not be positive"


def test_tuple_outputs(client: Client, worker: Worker) -> None:
    class Both(torch.nn.Module):  # type: ignore[misc]
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a + b, a * b

    client.modelstore("m", "TORCH", "CPU", scripted_blob(Both()))
    set_ab(client)
    client.modelexecute("m", ["a", "b"], ["s", "p"])
    assert client.tensorget("p").tolist() == [[4, 9], [4, 9]]


class ToBFloat16(torch.nn.Module):  # type: ignore[misc]
    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a, a.to(torch.bfloat16)


class ToComplex(torch.nn.Module):  # type: ignore[misc]
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.to(torch.complex64)


@pytest.mark.parametrize(
    ("module", "outputs", "message"),
    [
        (
            ToBFloat16(),
            ["x", "c"],
            "output 1 has type bfloat16, which no RedisAI tensor type holds",
        ),
        (ToComplex(), ["c"], "output 0 has type complex64, which no RedisAI tensor type holds"),
    ],
)
def test_outputs_of_types_redisai_lacks_fail_naming_them(
    client: Client, worker: Worker, module: object, outputs: list[str], message: str
) -> None:
    """torch's own text was "Got unsupported ScalarType BFloat16", RedisAI's "invalid data
    type": neither said which output, nor (for the second) what type."""
    client.modelstore("m", "TORCH", "CPU", scripted_blob(module))
    client.tensorset("a", np.array([1, 2], dtype=np.float32))
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["a"], outputs)
    assert str(info.value) == message
    with pytest.raises(JobFailed) as info:
        client.run("m", {"a": np.array([1, 2], dtype=np.float32)}, outputs)
    assert str(info.value) == message
    assert not client.exists(*outputs)
    source = (
        "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
        "    return tensors[0].to(torch.bfloat16)\n"
    )
    client.scriptstore("s", "CPU", source, entry_points=["f"])
    with pytest.raises(JobFailed) as info:
        client.scriptexecute("s", "f", inputs=["a"], outputs=["c"])
    assert str(info.value) == message.replace("output 1", "output 0").replace(
        "complex64", "bfloat16"
    )
    assert client.infoget("m")["errors"] == 2
    client.modelstore("add", "TORCH", "CPU", torch_blob("add"))  # the worker keeps serving
    assert client.modelexecute("add", ["a", "a"], ["y"]) == "OK"
    assert client.tensorget("y").tolist() == [2, 4]


def test_corrupt_blob_then_keeps_serving(client: Client, worker: Worker) -> None:
    bad = b"PK\x03\x04 not a torchscript archive"
    with pytest.raises(AIError, match=r"^Failed to load TorchScript model"):
        client.modelstore("bad", "TORCH", "CPU", bad)  # refused at store, as RedisAI
    store_unchecked(client, "bad", "TORCH", bad)
    set_ab(client)
    with pytest.raises(JobFailed, match=r"^Failed to load TorchScript model"):
        client.modelexecute("bad", ["a", "b"], ["c"])
    client.modelstore("good", "TORCH", "CPU", torch_blob("mul"))
    assert client.modelexecute("good", ["a", "b"], ["c"]) == "OK"
    assert client.tensorget("c").tolist() == [[4, 9], [4, 9]]


def test_gpu_refused_when_absent(client: Client, settings: Settings) -> None:
    if gpu_count("torch"):
        pytest.skip("a GPU is present: the refusal path needs a host without one")
    w = Worker(settings.replace(devices=("gpu:0",))).start()
    try:
        client.modelstore("m", "TORCH", "gpu:0", torch_blob("add"))
        set_ab(client)
        with pytest.raises(JobFailed) as info:
            client.modelexecute("m", ["a", "b"], ["c"])
    finally:
        w.stop(timeout=10)
    assert (
        str(info.value) == "device gpu:0 is not available on this worker host (torch found 0 GPUs)"
    )


def test_gpu_model_and_script(client: Client, settings: Settings) -> None:
    if not gpu_count("torch"):
        pytest.skip("no GPU present: torch sees no CUDA device on this host")
    w = Worker(settings.replace(devices=("GPU",))).start()
    try:
        client.modelstore("m", "TORCH", "GPU", torch_blob("add"))
        set_ab(client)
        client.modelexecute("m", ["a", "b"], ["c"])
        assert client.tensorget("c").tolist() == [[4, 6], [4, 6]]
        source = "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
        source += "    return tensors[0] * 2\n"
        client.scriptstore("s", "GPU", source, ["f"])
        client.scriptexecute("s", "f", inputs=["a"], outputs=["d"])
        assert client.tensorget("d").tolist() == [[4, 6], [4, 6]]
    finally:
        w.stop(timeout=10)


def test_threads_and_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiworker.backends.torch import TorchBackend

    before = (torch.get_num_threads(), torch.get_num_interop_threads())
    try:
        TorchBackend(BackendOptions(intra_op_parallelism=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before[0])
    spec = ModelSpec("m", parse_device("CPU:3"))  # CPU:n names a queue; it runs on the CPU
    model = TorchBackend(BackendOptions(model_execution_timeout_ms=5)).load(torch_blob(), spec)
    ticks = iter(range(1000))  # each clock read is a second later: the run "takes" 1 s
    monkeypatch.setattr(util, "_clock", lambda: float(next(ticks)))
    with pytest.raises(AIError, match=r"more than MODEL_EXECUTION_TIMEOUT \(5 ms\)"):
        model.run([np.ones(2, np.float32), np.ones(2, np.float32)])


class ConvBN(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.bn.running_mean.uniform_(-1, 1)  # something to fold
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def test_modules_are_optimized_for_inference_at_load() -> None:
    """The mode bench.torch_modes measured best (torch.jit.optimize_for_inference): weights are
    constants, batch norm is folded into the convolution, and every batch size gives what the
    module as stored gives, padding rows changing nothing in the real ones."""
    from aiworker.backends.torch import TorchBackend

    blob = scripted_blob(ConvBN().eval())
    model = TorchBackend(BackendOptions()).load(blob, ModelSpec("m", parse_device("CPU")))
    kinds = {node.kind() for node in model.module.graph.nodes()}  # type: ignore[attr-defined]
    assert "aten::batch_norm" not in kinds and "prim::GetAttr" not in kinds
    stored = torch.jit.load(io.BytesIO(blob)).eval()
    rows = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    padded = np.concatenate([rows, np.zeros((3, 3, 8, 8), np.float32)])
    with torch.inference_mode():
        expected = stored(torch.from_numpy(rows)).numpy()
    for batch in (rows[:1], rows, padded):
        out = model.run([batch])[0]
        np.testing.assert_allclose(out[: min(len(batch), 5)], expected[: len(batch)], atol=1e-5)
