"""OpenVINO: a portable ONNX export or an OpenVINO IR, in an explicit precision."""
from __future__ import annotations

from tinyvim.backends.ov.loader import OV_HINTS, OV_PRECISIONS, OV_SHAPES
from tinyvim.backends.ov.model_file import read_ir_info
from tinyvim.backends.ov.runner import OvRunner
from tinyvim.backends.spec import Backend, BackendOption, BenchmarkRow, RunnerRequest
from tinyvim.contract import BF16, FP32, INT8, PLUGIN_SCAN


def cpu_bf16_missing(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """Why OpenVINO's CPU plugin cannot compute in bf16 here (None when it can): it needs
    AVX512-BF16 or AMX; told from the CPU flags without importing openvino."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "the CPU's flags cannot be read (no /proc/cpuinfo)"
    if any(f in flags for f in ("avx512_bf16", "amx_bf16")):
        return None
    return "this CPU has neither AVX512-BF16 nor AMX, which OpenVINO's bf16 needs"


def _make(req: RunnerRequest) -> OvRunner:
    return OvRunner(req.model.path, device=req.option("ov_device"), precision=req.option("ov_precision"),
                    threads=req.threads, hint=req.option("ov_hint"), plugin_nodes=req.model.scan == PLUGIN_SCAN,
                    shapes=req.option("ov_shapes"),
                    log=None if req.timed else req.log)


BACKENDS = (
    Backend("ov", "OpenVINO on a portable ONNX export or an OpenVINO IR (pip install 'tinyvim[openvino]')", _make,
            model_kinds=("onnx", "openvino"), default_for=("openvino",), devices=("cpu", "gpu"),
            precisions=tuple(p[2] for p in OV_PRECISIONS.values()), exports_onnx=True,
            missing_model_hint="export one with `tinyvim export` (ONNX) or `tinyvim export --fmt openvino` (IR)",
            readers={"openvino": read_ir_info},
            benchmark_rows=(BenchmarkRow("OV f32", FP32, "onnx", {"ov_precision": "f32"}),
                            BenchmarkRow("OV bf16", BF16, "onnx", {"ov_precision": "bf16"}, unavailable=cpu_bf16_missing),
                            BenchmarkRow("OV int8", INT8, "onnx-int8", {"ov_precision": "f32"})),
            options=(BackendOption("ov_precision", "--ov-precision", "OpenVINO compute precision; bf16/f16 are "
                                   "validated with the reduced-precision tolerances [default: f32].",
                                   choices=tuple(OV_PRECISIONS)),
                     BackendOption("ov_device", "--ov-device", "OpenVINO device (CPU, GPU, AUTO) [default: CPU]."),
                     BackendOption("ov_hint", "--ov-hint", "OpenVINO performance hint [default: latency].",
                                   choices=tuple(OV_HINTS)),
                     BackendOption("ov_shapes", "--ov-shapes", "A model with a dynamic batch or size is compiled "
                                   "for each input shape it is fed (static: faster) or once for any shape "
                                   "[default: static].", choices=OV_SHAPES))),
)
