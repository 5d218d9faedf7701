"""ONNX Runtime: a portable ONNX export (a plugin-flavour one too, for checks, through a CPU custom op)."""
from __future__ import annotations

from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.spec import Backend, BackendOption, RunnerRequest
from tinyvim.contract import EXPORT_PRECISIONS


def _make(req: RunnerRequest) -> OrtRunner:
    # The plugin graph's CPU path runs the scan in Python: right for checks, not a speed to report.
    return OrtRunner(req.model.path, providers=req.option("providers"), threads=req.threads,
                     allow_plugin_cpu=req.purpose != "profile")


BACKENDS = (
    Backend("ort", "ONNX Runtime on an ONNX export", _make, model_kinds=("onnx",), default_for=("onnx",),
            devices=("cpu", "cuda"), precisions=EXPORT_PRECISIONS, exports_onnx=True,
            options=(BackendOption("providers", "--providers",
                                   "ONNX Runtime providers, comma list (cpu, cuda, ...) [default: cpu]."),)),
)
