"""Runners (PyTorch, ONNX Runtime, TensorRT) behind one interface, and the tools written
once against it: output comparison, validation against the PyTorch reference, profiling,
and TensorRT engine building.

Heavy or optional dependencies (torch, onnxruntime, tensorrt, matplotlib) are imported lazily
inside the runners' methods, so importing this package is cheap and works without them.
"""
from tinyvim.engines.base import BaseRunner
from tinyvim.engines.compare import DEFAULT_TOLERANCES, Comparison, Tolerance, compare_outputs, tolerance_for
from tinyvim.engines.ort_runner import OrtRunner
from tinyvim.engines.torch_runner import TorchRunner
from tinyvim.engines.trt_runner import TrtRunner

__all__ = ["BaseRunner", "Comparison", "DEFAULT_TOLERANCES", "OrtRunner", "Tolerance", "TorchRunner", "TrtRunner",
           "compare_outputs", "tolerance_for"]
