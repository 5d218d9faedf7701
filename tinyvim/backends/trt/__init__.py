"""TensorRT: engines built by `tinyvim build-engine` (builder.py, through Polygraphy's loaders),
run with the scan plugin; an engine's signature and metadata come from its JSON sidecar."""
from __future__ import annotations

import importlib.util

from tinyvim.backends.spec import Backend, BackendOption, BenchmarkRow, RunnerRequest
from tinyvim.backends.trt.model_file import read_engine_info
from tinyvim.backends.trt.runner import TrtRunner
from tinyvim.contract import COMPUTE_PRECISIONS, FP16, FP32, INT8


def trt_missing() -> str | None:
    """Why no engine can be built and run here (None when TensorRT and an NVIDIA GPU are present)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'tinyvim[tensorrt]')"
    import torch    # already loaded by every command that benchmarks
    if not torch.cuda.is_available():
        return "no NVIDIA GPU visible to CUDA"
    return None


def _make(req: RunnerRequest) -> TrtRunner:
    return TrtRunner(req.model.path, plugin=req.option("plugin"), cuda_graph=bool(req.option("cuda_graph")),
                     log=req.log)


BACKENDS = (
    Backend("trt", "TensorRT engine built by `tinyvim build-engine` (NVIDIA GPU)", _make,
            model_kinds=("engine",), default_for=("engine",), devices=("cuda",), precisions=COMPUTE_PRECISIONS,
            missing_model_hint="build one with `tinyvim build-engine MODEL.onnx`",
            readers={"engine": read_engine_info},
            benchmark_rows=tuple(BenchmarkRow(f"TRT {p}", p, f"engine-{p}", unavailable=trt_missing)
                                 for p in (FP32, FP16, INT8)),
            options=(BackendOption("plugin", "--plugin", "Scan plugin library for TensorRT "
                                   "[default: the one the engine was built with].", path=True),
                     BackendOption("cuda_graph", "--cuda-graph", "Replay TensorRT inference as a CUDA graph.",
                                   type=bool))),
)
