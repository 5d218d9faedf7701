"""ONNX Runtime: a portable ONNX export (a plugin-flavour one too, for checks, through a CPU custom op)."""
from __future__ import annotations

from tinyvim.backends.ort.loader import parse_providers
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.spec import Backend, BackendOption, BenchmarkRow, RunnerRequest
from tinyvim.contract import EXPORT_PRECISIONS, FP8, FP32, INT8


#: What `profile` says before timing a `tinyvim quantize` file on the CPU provider: measured in the
#: README ("Explicit int8 on this CPU"), so that nobody reads the slower figure as int8's speed.
QDQ_ON_CPU_NOTE = ("note: ONNX Runtime's CPU provider runs a TensorRT-style Q/DQ file (Q/DQ on layer inputs only) "
                   "mostly as dequantize + fp32 convolution, slower than the fp32 file (0.67-0.71x measured); "
                   "for int8 speed on a CPU time it with --backend ov")


def _make(req: RunnerRequest) -> OrtRunner:
    meta = req.model.metadata if req.model is not None else None
    if req.timed and meta is not None and meta.quantization is not None \
            and parse_providers(req.option("providers"))[0] == "CPUExecutionProvider":
        req.log(QDQ_ON_CPU_NOTE)
    # The plugin graph's CPU path runs our fast scan by default; only its PyTorch reference route
    # (TINYVIM_ORT_SCAN=reference) is too slow to report, and the runner refuses that for profile.
    return OrtRunner(req.model.path, providers=req.option("providers"), threads=req.threads,
                     allow_plugin_cpu=not req.timed, scan=req.model.scan)


BACKENDS = (
    Backend("ort", "ONNX Runtime on an ONNX export", _make, model_kinds=("onnx",), default_for=("onnx",),
            devices=("cpu", "cuda"), precisions=EXPORT_PRECISIONS, exports_onnx=True,
            # fp8: ORT's CPU provider dequantizes float8 to fp32: a fidelity check, not a speed
            benchmark_rows=(BenchmarkRow("ORT fp32", FP32, "onnx"), BenchmarkRow("ORT int8", INT8, "onnx-int8"),
                            BenchmarkRow("ORT fp8", FP8, "onnx-fp8", timed=False)),
            options=(BackendOption("providers", "--providers",
                                   "ONNX Runtime providers, comma list (cpu, cuda, ...) [default: cpu]."),)),
)
