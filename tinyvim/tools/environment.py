"""The machine and software a measurement ran on (every figure names its CPU and versions), and
the thread count tools default to."""
from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version


from tinyvim import __version__
from tinyvim.lazy import lazy_import

torch = lazy_import("torch")


def default_threads() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    for dist in {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "tensorrt": ("tensorrt", "tensorrt-cu12",
                                                                                "tensorrt-cu13")}.get(module, (module,)):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def environment(threads: int) -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": default_threads(), "threads": threads,
            "python": platform.python_version(), "platform": platform.platform(),
            "tinyvim": __version__, "torch": torch.__version__, "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime"), "tensorrt": _version("tensorrt"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "openvino": _version("openvino"), "extra_versions": ["openvino"] if _version("openvino") else []}
