"""Backends by name: what each one runs, where, in which precisions, with which options, and
the factory that makes its runner. `validate`, `profile` and the CLI look backends up here and
never branch on their names; adding a backend is one runner module plus one `register` line
at the bottom of this file (its options then appear on the commands by themselves).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tinyvim.contract import COMPUTE_PRECISIONS, EXPORT_PRECISIONS
from tinyvim.engines.base import BaseRunner
from tinyvim.engines.model_info import ModelInfo
from tinyvim.errors import TinyvimError

PURPOSES = ("validate", "profile", "reference")


@dataclass(frozen=True)
class BackendOption:
    """A backend-specific option. The CLI turns each into a `--flag` on validate and profile;
    its value reaches the factory as RunnerRequest.options[name] (None when not given)."""
    name: str
    flag: str
    help: str
    type: type = str                       # str, int, float or bool (bool: --flag/--no-flag)
    choices: tuple[str, ...] | None = None
    path: bool = False                     # a file path (the CLI checks it is not a folder)


@dataclass
class RunnerRequest:
    """Everything a runner factory may use; each backend takes what it needs."""
    purpose: str                           # one of PURPOSES
    model: ModelInfo | None = None         # the file, for backends that run one
    variant: str = "s"                     # the model, for backends that build it (torch)
    checkpoint: str | None = None
    ema: bool = False
    backbone: bool = False
    init_seed: int = 0
    allow_nonfinite: bool = False          # load a checkpoint with NaN/Inf weights (torch)
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print

    def option(self, name: str, default: Any = None) -> Any:
        value = self.options.get(name)
        return default if value is None else value


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    make_runner: Callable[[RunnerRequest], BaseRunner]
    model_kinds: tuple[str, ...] = ()      # file kinds it runs; () = builds the model from the variant
    default_for: tuple[str, ...] = ()      # file kinds for which `validate` picks it by default
    devices: tuple[str, ...] = ("cpu",)
    precisions: tuple[str, ...] = ("fp32",)
    options: tuple[BackendOption, ...] = ()
    #: may `profile` export a portable ONNX on the fly when no file of its kind is given?
    exports_onnx: bool = False
    #: how to get a file for it, said when one is missing
    missing_model_hint: str = ""

    @property
    def runs_files(self) -> bool:
        return bool(self.model_kinds)

    def check_model(self, info: ModelInfo) -> None:
        """A one-line error when this backend cannot run `info`'s kind of file."""
        if info.kind not in self.model_kinds:
            others = [b.name for b in _REGISTRY.values() if info.kind in b.model_kinds]
            hints = ([f"use --backend {' or '.join(others)}"] if others else []) + \
                ([self.missing_model_hint] if self.missing_model_hint else [])
            raise TinyvimError(f"backend {self.name} runs {' or '.join(k.upper() for k in self.model_kinds) or 'no'} "
                               f"files, and {info.path} is {info.kind.upper()}: {', or '.join(hints)}")

    def runner(self, request: RunnerRequest) -> BaseRunner:
        if request.purpose not in PURPOSES:
            raise ValueError(f"unknown purpose {request.purpose!r}")
        if self.runs_files:
            if request.model is None:
                raise TinyvimError(f"backend {self.name} needs a model file ({', '.join(self.model_kinds)})")
            self.check_model(request.model)
        return self.make_runner(request)


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    if backend.name in _REGISTRY:
        raise ValueError(f"backend {backend.name!r} is registered twice")
    for other in _REGISTRY.values():   # one option name must mean one thing on every command
        for a in backend.options:
            for b in other.options:
                if (a.name == b.name) != (a.flag == b.flag) or (a.name == b.name and a != b):
                    raise ValueError(f"option {a.flag} of {backend.name} clashes with {b.flag} of {other.name}")
    _REGISTRY[backend.name] = backend
    return backend


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise TinyvimError(f"unknown backend {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def parse_backends(values) -> list[Backend]:
    """'torch,ort' or ('torch', 'ort') -> backends in order, duplicates dropped."""
    names: list[str] = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        for name in (s.strip().lower() for s in str(v).split(",")):
            if name and name not in names:
                names.append(name)
    if not names:
        raise TinyvimError(f"no backend given; choose from {', '.join(_REGISTRY)}")
    return [get_backend(n) for n in names]


def default_backend_for(info: ModelInfo) -> Backend:
    for backend in _REGISTRY.values():
        if info.kind in backend.default_for:
            return backend
    raise TinyvimError(f"no backend runs {info.kind} files like {info.path}")


def all_options() -> list[BackendOption]:
    """Every backend option once, in registration order (for the CLI)."""
    seen: dict[str, BackendOption] = {}
    for backend in _REGISTRY.values():
        for opt in backend.options:
            seen.setdefault(opt.name, opt)
    return list(seen.values())


# --------------------------------------------------------------------- the backends
def _torch_factory(name: str) -> Callable[[RunnerRequest], BaseRunner]:
    def make(req: RunnerRequest) -> BaseRunner:
        from tinyvim.engines.torch_runner import TorchRunner
        return TorchRunner.for_backend(name, req.variant, checkpoint=req.checkpoint, ema=req.ema,
                                       backbone=req.backbone, seed=req.init_seed, threads=req.threads,
                                       allow_nonfinite=req.allow_nonfinite)
    return make


def _ort(req: RunnerRequest) -> BaseRunner:
    from tinyvim.engines.ort_runner import OrtRunner
    # The plugin graph's CPU path runs the scan in Python: right for checks, not a speed to report.
    return OrtRunner(req.model.path, providers=req.option("providers"), threads=req.threads,
                     allow_plugin_cpu=req.purpose != "profile")


def _trt(req: RunnerRequest) -> BaseRunner:
    from tinyvim.engines.trt_runner import TrtRunner
    return TrtRunner(req.model.path, plugin=req.option("plugin"), cuda_graph=bool(req.option("cuda_graph")),
                     log=req.log)


register(Backend("torch", "PyTorch eager, unfused model + sequential scan (the original computation; "
                          "validate's reference)", _torch_factory("torch"), devices=("cpu",)))
register(Backend("torch-fused", "PyTorch eager, re-parameterized model + parallel scan (our CUDA kernel on a GPU)",
                 _torch_factory("torch-fused"), devices=("cpu", "cuda")))
register(Backend("ort", "ONNX Runtime on an ONNX export", _ort, model_kinds=("onnx",), default_for=("onnx",),
                 devices=("cpu", "cuda"), precisions=EXPORT_PRECISIONS, exports_onnx=True,
                 options=(BackendOption("providers", "--providers",
                                        "ONNX Runtime providers, comma list (cpu, cuda, ...) [default: cpu]."),)))
def _ov(req: RunnerRequest) -> BaseRunner:
    from tinyvim.engines.ov_runner import OvRunner
    return OvRunner(req.model.path, device=req.option("ov_device"), precision=req.option("ov_precision"),
                    threads=req.threads, hint=req.option("ov_hint"), plugin_nodes=req.model.plugin_nodes,
                    log=req.log if req.purpose == "validate" else None)


register(Backend("trt", "TensorRT engine built by `tinyvim build-engine` (NVIDIA GPU)", _trt,
                 model_kinds=("engine",), default_for=("engine",), devices=("cuda",),
                 precisions=COMPUTE_PRECISIONS,
                 missing_model_hint="build one with `tinyvim build-engine MODEL.onnx`",
                 options=(BackendOption("plugin", "--plugin", "Scan plugin library for TensorRT "
                                        "[default: the one the engine was built with].", path=True),
                          BackendOption("cuda_graph", "--cuda-graph", "Replay TensorRT inference as a CUDA graph.",
                                        type=bool))))
register(Backend("ov", "OpenVINO on a portable ONNX export or an OpenVINO IR (pip install 'tinyvim[openvino]')", _ov,
                 model_kinds=("onnx", "openvino"), default_for=("openvino",), devices=("cpu", "gpu"),
                 precisions=("fp32", "bf16", "fp16"), exports_onnx=True,
                 missing_model_hint="export one with `tinyvim export` (ONNX) or `tinyvim export --fmt openvino` (IR)",
                 options=(BackendOption("ov_precision", "--ov-precision", "OpenVINO compute precision; bf16/f16 are "
                                        "validated with the reduced-precision tolerances [default: f32].",
                                        choices=("f32", "bf16", "f16")),
                          BackendOption("ov_device", "--ov-device", "OpenVINO device (CPU, GPU, AUTO) [default: CPU]."),
                          BackendOption("ov_hint", "--ov-hint", "OpenVINO performance hint [default: latency].",
                                        choices=("latency", "throughput")))))
