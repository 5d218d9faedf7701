"""The JSON sidecar beside every engine `tinyvim build-engine` writes (`model.engine.json`): what
the engine was built from and for, as ONE typed record that the builder writes and every reader
(the engine's ModelInfo, the runner's version/GPU check, `validate --per-block`, the Triton
repository writer) reads through the same code, so the two sides cannot drift apart.

On disk (sidecar_version 1): sidecar_version, tinyvim_version, tensorrt_version, gpu_name,
compute_capability, precision, strongly_typed, profiles [{input: {min, opt, max}}],
onnx {path (absolute), sha256}, onnx_metadata {ExportMetadata props}, tf32, plugin, build_seconds,
commands {trtexec, polygraphy}. Reading checks every field (SIDECAR_SCHEMA) before anything trusts it.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tinyvim.backends.trt.common import same_build_version, version_tuple
from tinyvim.contract import (
    COMPUTE_PRECISIONS,
    INPUT_NAME,
    MAX_BATCH,
    MAX_IMAGE_SIDE,
    ExportMetadata,
)
from tinyvim.errors import TinyvimError
from tinyvim.utils import atomic_write_bytes

SIDECAR_VERSION = 1


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """`model.engine` -> `model.engine.json`."""
    return Path(os.fspath(engine_path) + ".json")


#: a sidecar is a few KiB; anything far larger is not one (and is not read into memory)
MAX_SIDECAR_BYTES = 1 << 20


def _is_text(v) -> bool:
    return isinstance(v, str) and len(v) <= 4096 and "\x00" not in v


def _is_version(v) -> bool:
    if not _is_text(v):
        return False
    try:
        version_tuple(v)
    except ValueError:
        return False
    return True


def _shape_problem(shape) -> str | None:
    if not isinstance(shape, list) or len(shape) != 4 or \
            not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        return f"{str(shape)[:60]} is not a list of 4 integers [B, 3, H, W]"
    b, c, h, w = shape
    if not 1 <= b <= MAX_BATCH or c != 3 or not 1 <= h <= MAX_IMAGE_SIDE or not 1 <= w <= MAX_IMAGE_SIDE:
        return f"{shape} is outside [1..{MAX_BATCH}, 3, 1..{MAX_IMAGE_SIDE}, 1..{MAX_IMAGE_SIDE}]"
    return None


def _profiles_problem(profiles) -> str | None:
    if not isinstance(profiles, list) or not profiles or len(profiles) > 64:
        return "must be a non-empty list of optimisation profiles"
    for i, profile in enumerate(profiles):
        if not isinstance(profile, dict) or INPUT_NAME not in profile:
            return f"profile {i} must map the input {INPUT_NAME!r} to its min/opt/max shapes"
        for name, shapes in profile.items():
            if not isinstance(shapes, dict) or set(shapes) != {"min", "opt", "max"}:
                return f"profile {i} input {str(name)[:40]!r} must have exactly min, opt and max"
            for key in ("min", "opt", "max"):
                problem = _shape_problem(shapes[key])
                if problem:
                    return f"profile {i} {key} shape {problem}"
            if not all(lo <= mid <= hi for lo, mid, hi in zip(shapes["min"], shapes["opt"], shapes["max"])):
                return f"profile {i} shapes are not ordered min <= opt <= max"
    return None


#: The sidecar schema as the reading side relies on it: key -> (check, what it must be).
#: Unknown keys are ignored (a newer writer may add some); tests hold make_sidecar to it.
SIDECAR_SCHEMA = {
    "sidecar_version": (lambda v: v == SIDECAR_VERSION and not isinstance(v, bool), f"the integer {SIDECAR_VERSION}"),
    "tinyvim_version": (_is_text, "a text"),
    "tensorrt_version": (_is_version, "a version such as 10.3.0"),
    "gpu_name": (_is_text, "a text"),
    "compute_capability": (lambda v: isinstance(v, str) and re.fullmatch(r"\d{1,2}\.\d{1,2}", v) is not None,
                           "a compute capability such as 9.0"),
    "precision": (lambda v: v in COMPUTE_PRECISIONS, f"one of {', '.join(COMPUTE_PRECISIONS)}"),
    "strongly_typed": (lambda v: isinstance(v, bool), "true or false"),
    "profiles": (lambda v: _profiles_problem(v) is None, "a list of {input: {min, opt, max}} profiles"),
    "onnx": (lambda v: isinstance(v, dict) and _is_text(v.get("path")) and isinstance(v.get("sha256"), str)
             and re.fullmatch(r"[0-9a-f]{64}", v["sha256"]) is not None, "{path: text, sha256: 64 hex digits}"),
    "onnx_metadata": (lambda v: isinstance(v, dict) and len(v) <= 64
                      and all(_is_text(k) and _is_text(x) for k, x in v.items()), "a map of texts"),
    "plugin": (lambda v: v is None or _is_text(v), "a path or null"),
    "build_seconds": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      and v >= 0, "a finite number of seconds >= 0"),
}


def sidecar_problems(sidecar) -> list[str]:
    """What is wrong with a sidecar document by SIDECAR_SCHEMA (empty when nothing)."""
    if not isinstance(sidecar, dict):
        return [f"it holds a JSON {type(sidecar).__name__}, not an object"]
    problems = []
    for key, (ok, meaning) in SIDECAR_SCHEMA.items():
        if key not in sidecar:
            problems.append(f"{key} is missing")
        elif not ok(sidecar[key]):
            detail = _profiles_problem(sidecar[key]) if key == "profiles" else None
            problems.append(f"{key} must be {meaning}" + (f" ({detail})" if detail else ""))
    return problems


@dataclass(frozen=True)
class EngineSidecar:
    """What an engine was built from and for. `profiles`: [{input name: {"min"|"opt"|"max": [B, 3, H, W]}}];
    `onnx_metadata`: the source ONNX's tinyvim metadata_props (so `validate` can rebuild the PyTorch
    reference from an engine alone); `onnx_path` is absolute; `commands`: the equivalent trtexec /
    polygraphy command lines."""
    tinyvim_version: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    strongly_typed: bool
    profiles: list
    onnx_path: str
    onnx_sha256: str
    onnx_metadata: dict = field(default_factory=dict)
    plugin: str | None = None
    build_seconds: float = 0.0
    tf32: bool = False
    commands: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    @property
    def metadata(self) -> ExportMetadata | None:
        """The source ONNX's typed metadata (None when it had none)."""
        return ExportMetadata.from_props(self.onnx_metadata, source="engine sidecar")

    @property
    def batch_range(self) -> tuple[int, int]:
        """(min, max) batch of the first optimisation profile."""
        shapes = self.profiles[0][INPUT_NAME]
        return shapes["min"][0], shapes["max"][0]

    # ------------------------------------------------------------------ the one writer and reader
    def to_dict(self) -> dict:
        return {
            "sidecar_version": SIDECAR_VERSION,
            "tinyvim_version": self.tinyvim_version,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "strongly_typed": self.strongly_typed,
            "profiles": self.profiles,
            "onnx": {"path": self.onnx_path, "sha256": self.onnx_sha256},
            "onnx_metadata": dict(self.onnx_metadata),
            "tf32": bool(self.tf32),
            "plugin": self.plugin,
            "build_seconds": round(float(self.build_seconds), 3),
            "commands": dict(self.commands),
        }

    @classmethod
    def from_dict(cls, doc: dict, source: str = "engine sidecar") -> EngineSidecar:
        """A sidecar from its JSON document, every field checked first (one-line error)."""
        problems = sidecar_problems(doc)
        if problems:
            raise TinyvimError(f"{source} is not a valid engine sidecar ({problems[0]}"
                               f"{f'; +{len(problems) - 1} more' if len(problems) > 1 else ''}): rebuild the engine")
        commands = doc.get("commands") if isinstance(doc.get("commands"), dict) else {}
        return cls(tinyvim_version=doc["tinyvim_version"], tensorrt_version=doc["tensorrt_version"],
                   gpu_name=doc["gpu_name"], compute_capability=doc["compute_capability"],
                   precision=doc["precision"], strongly_typed=doc["strongly_typed"], profiles=doc["profiles"],
                   onnx_path=doc["onnx"]["path"], onnx_sha256=doc["onnx"]["sha256"],
                   onnx_metadata=dict(doc["onnx_metadata"]), plugin=doc["plugin"],
                   build_seconds=float(doc["build_seconds"]), tf32=doc.get("tf32") is True,
                   commands={k: v for k, v in commands.items() if isinstance(k, str)})

    def write(self, engine_path: str | os.PathLike) -> Path:
        """Write `engine_path`.json atomically; returns its path."""
        path = sidecar_path(engine_path)
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return path

    @classmethod
    def read(cls, engine_path: str | os.PathLike) -> EngineSidecar:
        """The sidecar of `engine_path`, checked before anything trusts it; one-line TinyvimError
        naming the first problem otherwise."""
        path = sidecar_path(engine_path)
        if not path.is_file():
            raise TinyvimError(f"{path} not found: engines are described by the JSON sidecar "
                               "`tinyvim build-engine` writes next to them; rebuild the engine")
        try:
            size = path.stat().st_size
            if size > MAX_SIDECAR_BYTES:
                raise TinyvimError(f"{path} is {size:,} bytes, not an engine sidecar (a few KiB): rebuild the engine")
            doc = json.loads(path.read_bytes().decode("utf-8"))
        except TinyvimError:
            raise
        except (OSError, ValueError, RecursionError) as exc:   # JSONDecodeError, UnicodeDecodeError: ValueErrors
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise TinyvimError(f"{path} is not a valid engine sidecar ({reason}): rebuild the engine") from None
        return cls.from_dict(doc, source=str(path))


def read_sidecar(engine_path: str | os.PathLike) -> EngineSidecar:
    return EngineSidecar.read(engine_path)


def check_sidecar(sidecar: EngineSidecar | dict, *, trt_version: str, gpu: dict) -> tuple[list[str], list[str]]:
    """(errors, warnings) of running an engine described by `sidecar` (or a raw document) here.

    Errors: a different TensorRT version or GPU compute capability (the engine's kernels and
    format would not load or run). Warning: same capability, another GPU model (it runs, but
    tactics were timed on the other card)."""
    errors, warnings = [], []
    if isinstance(sidecar, dict):
        problems = sidecar_problems(sidecar)
        if problems:
            return [f"engine sidecar is invalid ({'; '.join(problems[:3])}): rebuild the engine"], []
        sidecar = EngineSidecar.from_dict(sidecar)
    built = sidecar.tensorrt_version
    if not same_build_version(built, trt_version):
        errors.append(f"engine was built with TensorRT {built} but TensorRT {trt_version} is installed: "
                      "rebuild it with `tinyvim build-engine` on this machine")
    if sidecar.compute_capability != gpu["compute_capability"]:
        errors.append(f"engine was built for {sidecar.gpu_name} (compute capability "
                      f"{sidecar.compute_capability}) but this GPU is {gpu['name']} "
                      f"(compute capability {gpu['compute_capability']}): rebuild it on this GPU")
    elif sidecar.gpu_name != gpu["name"]:
        warnings.append(f"engine was built on {sidecar.gpu_name}, running on {gpu['name']} "
                        "(same compute capability): it runs, but rebuild for best performance")
    return errors, warnings


def make_sidecar(*, tinyvim_version: str, trt_version: str, gpu: dict, precision: str, profiles: list,
                 onnx_path: str, onnx_sha256: str, onnx_metadata: dict, build_seconds: float, strongly_typed: bool,
                 plugin: str | None, tf32: bool = False, commands: dict | None = None) -> dict:
    """The on-disk document of an EngineSidecar from build facts (what tests and tools that
    write a sidecar by hand use; the builder writes EngineSidecar.write)."""
    return EngineSidecar(tinyvim_version=tinyvim_version, tensorrt_version=trt_version, gpu_name=gpu["name"],
                         compute_capability=gpu["compute_capability"], precision=precision,
                         strongly_typed=strongly_typed, profiles=profiles, onnx_path=onnx_path,
                         onnx_sha256=onnx_sha256, onnx_metadata=dict(onnx_metadata), plugin=plugin,
                         build_seconds=build_seconds, tf32=tf32, commands=dict(commands or {})).to_dict()
