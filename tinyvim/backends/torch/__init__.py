"""PyTorch: the original computation (`torch`, validate's reference) and the re-parameterized
eager model (`torch-fused`)."""
from __future__ import annotations

from collections.abc import Callable

from tinyvim.backends.spec import Backend, BenchmarkRow, RunnerRequest
from tinyvim.backends.torch.runner import TorchRunner


def _factory(name: str) -> Callable[[RunnerRequest], TorchRunner]:
    def make(req: RunnerRequest) -> TorchRunner:
        return TorchRunner.for_backend(name, req.spec, threads=req.threads)
    return make


BACKENDS = (
    Backend("torch", "PyTorch eager, unfused model + sequential scan (the original computation; validate's "
                     "reference)", _factory("torch"), devices=("cpu",)),
    Backend("torch-fused", "PyTorch eager, re-parameterized model + parallel scan (our CUDA kernel on a GPU)",
            _factory("torch-fused"), devices=("cpu", "cuda"),
            benchmark_rows=(BenchmarkRow("torch eager", "fp32", "torch"),)),
)
