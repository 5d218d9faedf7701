"""What a backend declares about itself (Polygraphy style: one folder per backend under
tinyvim/backends/, each declaring its `Backend`s in its __init__): what it runs, where, in which
precisions, with which options, which file kinds it reads, and the factory that makes its runner.
tinyvim/backends/registry.py collects the declarations; tools look backends up by name there."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Mapping, Sequence

from tinyvim.backends.base import BaseRunner
from tinyvim.backends.model_file import ModelInfo
from tinyvim.contract import FILE_KIND_NAMES, FP32, ModelSpec
from tinyvim.errors import TinyvimError


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
    """Everything a runner factory may use; each backend takes what it needs. What the runner is
    for is said as facts a backend can act on, not as the calling tool's name."""
    model: ModelInfo | None = None         # the file, for backends that run one
    spec: ModelSpec = ModelSpec()          # the model, for backends that build it (torch)
    #: the runner is timed (profile): a correctness-only path (ONNX Runtime's Python scan op) is
    #: refused rather than timed, and speed caveats are said; False: it is checked (validate)
    timed: bool = False
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print

    def option(self, name: str, default: Any = None) -> Any:
        value = self.options.get(name)
        return default if value is None else value


#: what a benchmark row runs: the PyTorch model, or a file tinyvim makes - the fp32 portable ONNX
#: (dynamic batch), its `tinyvim quantize` int8 / fp8 Q/DQ versions, a TensorRT engine built from
#: the fp32 ONNX (fp32/fp16) or from the int8 one. tinyvim.tools.benchmark knows how to make each.
ARTIFACTS = ("torch", "onnx", "onnx-int8", "onnx-fp8", "engine-fp32", "engine-fp16", "engine-int8")


@dataclass(frozen=True)
class BenchmarkRow:
    """A row a backend contributes to `tinyvim benchmark`: a label, the precision computed in, the
    artifact it runs (ARTIFACTS), runner options, and whether its speed means anything here
    (timed=False: fidelity only, e.g. fp8 Q/DQ, which a CPU runs as dequantize + fp32).
    `unavailable` says why the row cannot run on this machine (None: it can), cheaply, without
    importing the runtime when it can be told otherwise."""
    label: str
    precision: str
    artifact: str
    options: Mapping[str, Any] = field(default_factory=dict)
    timed: bool = True
    unavailable: Callable[[], str | None] | None = None

    def __post_init__(self):
        if self.artifact not in ARTIFACTS:
            raise ValueError(f"benchmark row {self.label}: unknown artifact {self.artifact!r}")


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    make_runner: Callable[[RunnerRequest], BaseRunner]
    model_kinds: tuple[str, ...] = ()      # file kinds it runs; () = builds the model from the variant
    default_for: tuple[str, ...] = ()      # file kinds for which `validate` picks it by default
    devices: tuple[str, ...] = ("cpu",)
    precisions: tuple[str, ...] = (FP32,)
    options: tuple[BackendOption, ...] = ()
    #: may `profile` export a portable ONNX on the fly when no file of its kind is given?
    exports_onnx: bool = False
    #: how to get a file for it, said when one is missing
    missing_model_hint: str = ""
    #: file kind (a key of contract.FILE_KINDS) -> reader of such a file's ModelInfo, for the
    #: kinds this backend owns (ONNX, which every backend starts from, is read in model_file.py)
    readers: Mapping[str, Callable[[str], ModelInfo]] = field(default_factory=dict)
    #: the rows `tinyvim benchmark` shows for it
    benchmark_rows: tuple[BenchmarkRow, ...] = ()

    @property
    def runs_files(self) -> bool:
        return bool(self.model_kinds)

    def check_model(self, info: ModelInfo, others: Sequence[str] = ()) -> None:
        """A one-line error when this backend cannot run `info`'s kind of file (`others`: the
        backends that can, named in the error)."""
        if info.kind not in self.model_kinds:
            hints = ([f"use --backend {' or '.join(others)}"] if others else []) + \
                ([self.missing_model_hint] if self.missing_model_hint else [])
            raise TinyvimError(f"backend {self.name} runs {self.kinds_named() or 'no model files'}, and {info.path} "
                               f"is {FILE_KIND_NAMES.get(info.kind, info.kind)}: {', or '.join(hints)}")

    def kinds_named(self) -> str:
        """'an ONNX model or an OpenVINO IR': the file kinds this backend runs, as messages say them."""
        return " or ".join(FILE_KIND_NAMES.get(k, k) for k in self.model_kinds)

    def runner(self, request: RunnerRequest) -> BaseRunner:
        if self.runs_files:
            if request.model is None:
                raise TinyvimError(f"backend {self.name} needs a model file ({', '.join(self.model_kinds)})")
            self.check_model(request.model)
        return self.make_runner(request)
