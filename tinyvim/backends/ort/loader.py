"""Getting an ONNX Runtime session ready: the optional import, provider names, optimisation levels."""
from __future__ import annotations

from collections.abc import Sequence

from tinyvim.lazy import import_optional

#: CLI spelling -> onnxruntime.GraphOptimizationLevel member name
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

def import_onnxruntime():
    """onnxruntime, or a one-line error saying how to install it."""
    return import_optional("onnxruntime")


def parse_providers(text: str | Sequence[str] | None) -> list[str]:
    """'cuda,cpu' or ['CUDAExecutionProvider'] -> full provider names, CPU last as fallback.

    Short names are accepted case-insensitively (cpu, cuda, tensorrt, dml, coreml, openvino)."""
    if not text:
        return ["CPUExecutionProvider"]
    items = text.split(",") if isinstance(text, str) else list(text)
    short = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
             "dml": "DmlExecutionProvider", "coreml": "CoreMLExecutionProvider",
             "openvino": "OpenVINOExecutionProvider"}
    names = []
    for item in (i.strip() for i in items):
        if item:
            names.append(short.get(item.lower(), item))
    return names or ["CPUExecutionProvider"]
