"""What a Triton model repository says beyond the model itself, and the options that set it,
declared once: the CLI builds `export --fmt triton`'s options from TRITON_OPTIONS, the
settings' checks name those options in their messages, and `settings_from_options` reads the
parsed values back into TritonSettings.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any
from collections.abc import Mapping

from tinyvim.contract import (
    MAX_BATCH,
    MAX_THREADS,
    TRITON_BACKENDS,
    TRITON_MODEL_NAME,
    TRITON_PYTHON_RUNTIMES,
)
from tinyvim.errors import TinyvimError

#: instance kind -> config.pbtxt enum
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
#: onnxruntime backend execution accelerators: name -> (instance kind it needs, config field)
ORT_ACCELERATORS = {"none": (None, None), "openvino": ("cpu", "cpu_execution_accelerator"),
                    "tensorrt": ("gpu", "gpu_execution_accelerator")}
MAX_INSTANCES = 64
#: Triton's own limit is larger; 10 s is already far past any latency budget (a typo guard)
MAX_QUEUE_DELAY_US = 10_000_000
_MODEL_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class TritonOption:
    """One option of `export --fmt triton`. `field`: the TritonSettings field it sets (None:
    not a setting, e.g. --engine); `kind`: int, str, 'int_list' (N,N) or 'file'; `default`: the
    help's default text where it is not the field's default; `only`: the backend it applies to."""
    flag: str
    field: str | None
    help: str
    kind: Any = str
    choices: tuple[str, ...] = ()
    default: str | None = None
    only: str | None = None

    @property
    def param(self) -> str:
        """The keyword the CLI passes the value as (click's name for the flag)."""
        return self.flag.lstrip("-").replace("-", "_")


TRITON_OPTIONS = (
    TritonOption("--triton-backend", "backend", "Backend the repository is for: python (ONNX Runtime/OpenVINO "
                 "inside Triton's Python backend: runs with the `serve` extra's server), onnxruntime, tensorrt",
                 choices=TRITON_BACKENDS),
    TritonOption("--model-name", "model_name", "Model name"),
    TritonOption("--max-batch-size", "max_batch_size",
                 "Largest batch Triton forms (0: no batching, the ONNX's fixed --batch)", kind=int),
    TritonOption("--preferred-batch-sizes", "preferred_batch_sizes", "Dynamic batcher's preferred batch sizes",
                 kind="int_list", default="none"),
    TritonOption("--max-queue-delay-us", "max_queue_delay_us",
                 "How long a request may wait for others to batch with", kind=int),
    TritonOption("--instances", "instances", "Model instances", kind=int),
    TritonOption("--instance-kind", "instance_kind", "Where instances run", choices=tuple(INSTANCE_KINDS),
                 default="gpu for tensorrt, else cpu"),
    TritonOption("--intra-op-threads", "threads", "Threads per instance (onnxruntime, python)", kind=int,
                 default="the runtime's"),
    TritonOption("--ort-accelerator", "accelerator", "Execution accelerator: openvino (CPU) or tensorrt (GPU)",
                 choices=tuple(ORT_ACCELERATORS), only="onnxruntime"),
    TritonOption("--python-runtime", "python_runtime", "What model.py runs the ONNX with",
                 choices=TRITON_PYTHON_RUNTIMES, only="python"),
    TritonOption("--engine", None, "A plan from `tinyvim build-engine`", kind="file", default="build one",
                 only="tensorrt"),
)
#: TritonSettings field (or option keyword) -> its flag, for messages
FLAG = {o.field or o.param: o.flag for o in TRITON_OPTIONS}


@dataclass(frozen=True)
class TritonSettings:
    """What config.pbtxt says beyond the model's own signature.

    max_batch_size 0 turns Triton's batching off (the ONNX's own batch, fixed, is then part of
    the dims). threads: intra-op threads per instance (0: the runtime's default, all cores)."""
    backend: str = TRITON_BACKENDS[0]
    model_name: str = TRITON_MODEL_NAME
    version: int = 1
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 2000
    instances: int = 1
    instance_kind: str | None = None         # cpu | gpu; None: gpu for tensorrt, else cpu
    threads: int = 0
    accelerator: str = "none"                # onnxruntime backend only
    python_runtime: str = TRITON_PYTHON_RUNTIMES[0]      # python backend only

    @property
    def kind(self) -> str:
        return self.instance_kind or ("gpu" if self.backend == "tensorrt" else "cpu")

    def check(self) -> TritonSettings:
        """One-line errors for settings Triton would refuse or that make no sense together."""
        f = FLAG
        if self.backend not in TRITON_BACKENDS:
            raise TinyvimError(f"{f['backend']} {self.backend!r}: choose {', '.join(TRITON_BACKENDS)}")
        if not self.model_name or set(self.model_name) - _MODEL_NAME_CHARS or self.model_name.startswith("."):
            raise TinyvimError(f"{f['model_name']} {self.model_name!r}: use letters, digits, '_', '-' and '.', "
                               "not first (it is a folder name and a URL path element)")
        if not _int(self.version) or not 1 <= self.version <= 2**31 - 1:
            raise TinyvimError(f"model version {self.version!r} must be a positive integer")
        if not _int(self.max_batch_size) or not 0 <= self.max_batch_size <= MAX_BATCH:
            raise TinyvimError(f"{f['max_batch_size']} must be 0 (no batching) to {MAX_BATCH}, "
                               f"got {self.max_batch_size!r}")
        bad = [b for b in self.preferred_batch_sizes if not _int(b) or not 1 <= b <= self.max_batch_size]
        if bad:
            raise TinyvimError(f"{f['preferred_batch_sizes']} {bad} must lie in 1..{f['max_batch_size']} "
                               f"({self.max_batch_size})" + (": batching is off" if not self.max_batch_size else ""))
        if not _int(self.max_queue_delay_us) or not 0 <= self.max_queue_delay_us <= MAX_QUEUE_DELAY_US:
            raise TinyvimError(f"{f['max_queue_delay_us']} must be 0..{MAX_QUEUE_DELAY_US} (10 s), "
                               f"got {self.max_queue_delay_us!r}")
        if not _int(self.instances) or not 1 <= self.instances <= MAX_INSTANCES:
            raise TinyvimError(f"{f['instances']} must be 1..{MAX_INSTANCES}, got {self.instances!r}")
        if self.kind not in INSTANCE_KINDS:
            raise TinyvimError(f"{f['instance_kind']} {self.kind!r}: choose {' or '.join(INSTANCE_KINDS)}")
        if self.backend == "tensorrt" and self.kind != "gpu":
            raise TinyvimError(f"a TensorRT plan runs on a GPU only: drop {f['instance_kind']} cpu, or use "
                               f"{f['backend']} onnxruntime or python for CPU instances")
        if not _int(self.threads) or not 0 <= self.threads <= MAX_THREADS:
            raise TinyvimError(f"{f['threads']} must be 0 (runtime default) to {MAX_THREADS}, got {self.threads!r}")
        if self.accelerator not in ORT_ACCELERATORS:
            raise TinyvimError(f"{f['accelerator']} {self.accelerator!r}: choose {', '.join(ORT_ACCELERATORS)}")
        needs = ORT_ACCELERATORS[self.accelerator][0]
        if self.accelerator != "none" and self.backend != "onnxruntime":
            raise TinyvimError(f"{f['accelerator']} applies to {f['backend']} onnxruntime only")
        if needs and needs != self.kind:
            raise TinyvimError(f"{f['accelerator']} {self.accelerator} runs on {needs.upper()} instances: "
                               f"use {f['instance_kind']} {needs}")
        if self.python_runtime not in TRITON_PYTHON_RUNTIMES:
            raise TinyvimError(f"{f['python_runtime']} {self.python_runtime!r}: choose "
                               f"{', '.join(TRITON_PYTHON_RUNTIMES)}")
        if self.python_runtime != TRITON_PYTHON_RUNTIMES[0] and self.backend != "python":
            raise TinyvimError(f"{f['python_runtime']} applies to {f['backend']} python only")
        return self


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def given_options(options: Mapping[str, Any]) -> list[str]:
    """The flags of TRITON_OPTIONS that `options` (keyword -> value, None: not given) sets."""
    return [o.flag for o in TRITON_OPTIONS if options.get(o.param) is not None]


def settings_from_options(options: Mapping[str, Any]) -> TritonSettings:
    """TritonSettings from the options' values (keyword -> value; None keeps the default),
    checked. `preferred_batch_sizes` is a sequence of integers (the CLI parses 'N,N')."""
    known = {f.name for f in fields(TritonSettings)}
    values = {}
    for option in TRITON_OPTIONS:
        value = options.get(option.param)
        if value is None or option.field not in known:
            continue
        values[option.field] = tuple(value) if option.kind == "int_list" else value
    return TritonSettings(**values).check()
