"""TorchScript execution modes for the batch shapes a batching worker makes.

A batching worker runs a model on batches whose size varies call by call. TorchScript's default
(profiling) executor specialises a module's graph for the shapes it sees and re-specialises when
they change, so the mode matters. Each mode below is timed, after a warm-up of every padded size,
on one seeded sequence of batch sizes between 1 and ``--max-batch``:

- **fixed**: every call at the largest size (the ceiling);
- **padded**: each batch padded up to a power of two (what the worker's lane does); rows/s counts
  the real rows only;
- **varying**: each batch at its own size.

Modes (public torch APIs only): the default profiling executor; ``torch.jit.optimized_execution
(False)`` around each call (thread-local, so per model); ``torch.jit.freeze``;
``torch.jit.optimize_for_inference``; freeze without optimization; and
``torch.jit.set_fusion_strategy([("DYNAMIC", 20)])`` (process-wide).

    python -m bench.torch_modes [--calls 40] [--rounds 3] [--max-batch 32] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bench.common import markdown_table, torchscript_bytes


class ConvNet(torch.nn.Module):  # type: ignore[misc]
    """A small image classifier: 3x32x32 in, 10 classes out."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.BatchNorm2d(32),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.features(x).flatten(1)), dim=1)


class MLP(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 512),
            torch.nn.GELU(), torch.nn.Linear(512, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(x)) * 2 - 1


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]] = {
    "conv net": (ConvNet, (3, 32, 32)),
    "MLP": (MLP, (256,)),
}


@contextlib.contextmanager
def fusion_strategy(strategy: list[tuple[str, int]] | None) -> Iterator[None]:
    if strategy is None:
        yield
        return
    previous = torch.jit.set_fusion_strategy(strategy)
    try:
        yield
    finally:
        torch.jit.set_fusion_strategy(previous)


def unoptimized(module: Any) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        with torch.jit.optimized_execution(False):
            return module(*args)

    return call


# name -> (prepare the loaded module, fusion strategy while it runs)
MODES: dict[str, tuple[Callable[[Any], Callable[..., Any]], list[tuple[str, int]] | None]] = {
    "profiling (default)": (lambda m: m, None),
    "optimized_execution(False)": (unoptimized, None),
    "freeze": (torch.jit.freeze, None),
    "freeze + optimized_execution(False)": (lambda m: unoptimized(torch.jit.freeze(m)), None),
    "optimize_for_inference": (torch.jit.optimize_for_inference, None),
    "fusion DYNAMIC 20": (lambda m: m, [("DYNAMIC", 20)]),
}


def padded(size: int) -> int:
    return 1 << (size - 1).bit_length()


PATTERNS = ("fixed", "padded", "varying")


def sizes_of(pattern: str, real: list[int], max_batch: int) -> tuple[list[int], list[int]]:
    """(sizes run, real rows) of each call in a pattern."""
    if pattern == "fixed":
        return [max_batch] * len(real), [max_batch] * len(real)
    if pattern == "padded":
        return [padded(n) for n in real], real
    return real, real


class Loaded:
    """One model in one mode, warmed up at every padded size as the worker's lane does."""

    def __init__(self, name: str, mode: str, max_batch: int, device: str) -> None:
        build, self.row = MODELS[name]
        prepare, self.strategy = MODES[mode]
        self.device = device
        blob = torchscript_bytes(build().eval())
        with fusion_strategy(self.strategy), torch.inference_mode():
            module = torch.jit.load(io.BytesIO(blob), map_location=device).eval()
            self.run = prepare(module)
            for size in [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]:
                for _ in range(3):
                    self.run(torch.randn(size, *self.row, device=device))
        self.inputs: dict[int, torch.Tensor] = {}

    def seconds(self, size: int) -> float:
        """The time of one call at batch ``size``."""
        x = self.inputs.get(size)
        if x is None:
            x = self.inputs[size] = torch.randn(size, *self.row, device=self.device)
        with fusion_strategy(self.strategy), torch.inference_mode():
            started = time.perf_counter()
            self.run(x)
            if self.device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - started


def measure(name: str, calls: int, max_batch: int, device: str, rounds: int) -> list[list[object]]:
    """Rows per second of every mode and pattern. Each (mode, pattern) has a module of its own
    (the executor's state depends on the shapes it has seen); they take turns call by call, so
    that load from elsewhere hits them alike, and each call's time is its best of ``rounds``."""
    combos = [(mode, pattern) for mode in MODES for pattern in PATTERNS]
    loaded = {combo: Loaded(name, combo[0], max_batch, device) for combo in combos}
    rng = random.Random(17)
    real = [rng.randint(1, max_batch) for _ in range(calls)]
    plans = {pattern: sizes_of(pattern, real, max_batch) for pattern in PATTERNS}
    best: dict[tuple[str, str], list[float]] = {combo: [math.inf] * calls for combo in combos}
    for _ in range(rounds):
        for i in range(calls):
            for combo in combos:
                took = loaded[combo].seconds(plans[combo[1]][0][i])
                best[combo][i] = min(best[combo][i], took)
    table = []
    for mode in MODES:
        fixed, pad, vary = (sum(plans[p][1]) / sum(best[mode, p]) for p in PATTERNS)
        table.append([name, mode, fixed, pad, vary, f"{pad / fixed:.2f}", f"{vary / fixed:.2f}"])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="timed calls per pattern")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="each call's best is kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates TorchScript
    rows = [
        row
        for name in MODELS
        for row in measure(name, args.calls, args.max_batch, args.device, args.rounds)
    ]
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"batch sizes 1-{args.max_batch}, {args.calls} calls per pattern, each its best of "
          f"{args.rounds} rounds; rows/s of real rows")  # fmt: skip
    headers = ["model", "mode", "fixed", "padded", "varying", "padded/fixed", "varying/fixed"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
