"""OpenVINO: a portable ONNX export or an OpenVINO IR, in an explicit precision."""
from __future__ import annotations

from tinyvim.backends.ov.loader import OV_HINTS, OV_PRECISIONS
from tinyvim.backends.ov.model_file import read_ir_info
from tinyvim.backends.ov.runner import OvRunner
from tinyvim.backends.spec import Backend, BackendOption, RunnerRequest
from tinyvim.contract import PLUGIN_SCAN


def _make(req: RunnerRequest) -> OvRunner:
    return OvRunner(req.model.path, device=req.option("ov_device"), precision=req.option("ov_precision"),
                    threads=req.threads, hint=req.option("ov_hint"), plugin_nodes=req.model.scan == PLUGIN_SCAN,
                    log=None if req.timed else req.log)


BACKENDS = (
    Backend("ov", "OpenVINO on a portable ONNX export or an OpenVINO IR (pip install 'tinyvim[openvino]')", _make,
            model_kinds=("onnx", "openvino"), default_for=("openvino",), devices=("cpu", "gpu"),
            precisions=tuple(p[2] for p in OV_PRECISIONS.values()), exports_onnx=True,
            missing_model_hint="export one with `tinyvim export` (ONNX) or `tinyvim export --fmt openvino` (IR)",
            readers={"openvino": read_ir_info},
            options=(BackendOption("ov_precision", "--ov-precision", "OpenVINO compute precision; bf16/f16 are "
                                   "validated with the reduced-precision tolerances [default: f32].",
                                   choices=tuple(OV_PRECISIONS)),
                     BackendOption("ov_device", "--ov-device", "OpenVINO device (CPU, GPU, AUTO) [default: CPU]."),
                     BackendOption("ov_hint", "--ov-hint", "OpenVINO performance hint [default: latency].",
                                   choices=tuple(OV_HINTS)))),
)
