"""ExecuTorch: a .pte program (XNNPACK-delegated) through ExecuTorch's runtime, on this CPU
(pip install 'tinyvim[executorch]'; imported when a runner activates)."""
from __future__ import annotations

from tinyvim.backends.executorch.model_file import read_pte_info
from tinyvim.backends.executorch.runner import ExecutorchRunner
from tinyvim.backends.spec import Backend, RunnerRequest


def _make(req: RunnerRequest) -> ExecutorchRunner:
    return ExecutorchRunner(req.model.path, threads=req.threads, output_names=req.model.output_names)


BACKENDS = (
    Backend("executorch", "ExecuTorch runtime on a .pte (XNNPACK; pip install 'tinyvim[executorch]')", _make,
            model_kinds=("executorch",), default_for=("executorch",),
            missing_model_hint="export one with `tinyvim export --fmt executorch`",
            readers={"executorch": read_pte_info}),
)
