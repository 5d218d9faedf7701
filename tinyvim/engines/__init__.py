"""Runners (PyTorch, ONNX Runtime, TensorRT) behind one interface, and the tools written
once against it: output comparison, validation against the PyTorch reference, profiling,
and TensorRT engine building.

Heavy or optional dependencies (onnxruntime, tensorrt, matplotlib, the model) are imported
lazily inside the modules that need them, so `import tinyvim.engines` is cheap.
"""
from tinyvim.engines.base import BaseRunner

__all__ = ["BaseRunner"]
