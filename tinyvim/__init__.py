"""tinyvim: TinyViM from a PyTorch checkpoint to a verified ONNX Runtime / TensorRT engine.

Importing the package imports nothing else (so `tinyvim.contract` and the CLI's help load
without torch); the Python API's entry points are resolved on first use (PEP 562)."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_API = {
    "TinyvimError": "tinyvim.errors",
    "create_model": "tinyvim.model",
    "reparameterize": "tinyvim.model",
    "scan_implementation": "tinyvim.ops",
    "set_default_scan_implementation": "tinyvim.ops",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tinyvim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
