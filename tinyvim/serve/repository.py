"""A Triton Inference Server model repository for a TinyViM export (`export --fmt triton`).

    REPO/<model>/config.pbtxt          written from the export's signature and metadata
    REPO/<model>/<version>/model.onnx  onnxruntime and python backends
    REPO/<model>/<version>/model.py    python backend (tinyvim/serve/triton_models/classifier.py)
    REPO/<model>/<version>/model.plan  tensorrt backend, with its sidecar model.plan.json

Inputs/outputs (names, dtypes, dims without the batch) come from the ONNX graph, the model's
description (variant, size, mean/std, scan, precision) from its validated ExportMetadata. The
model folder is built beside its destination and moved into place in one rename, so a server
polling the repository never sees half a model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tinyvim.contract import (MAX_BATCH, TRITON_BACKENDS, TRITON_MODEL_NAME, TRITON_ONNX_FILE, TRITON_PLAN_FILE,
                              TRITON_PYTHON_PARAMS, TRITON_PYTHON_RUNTIMES, ExportMetadata, format_size)
from tinyvim.errors import TinyvimError

INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
#: onnxruntime backend execution accelerators: name -> (instance kind it needs, config field)
ORT_ACCELERATORS = {"none": (None, None), "openvino": ("cpu", "cpu_execution_accelerator"),
                    "tensorrt": ("gpu", "gpu_execution_accelerator")}
#: ONNX TensorProto element type name -> Triton data type
ONNX_TO_TRITON_DTYPE = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "BFLOAT16": "TYPE_BF16",
                        "DOUBLE": "TYPE_FP64", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "INT8": "TYPE_INT8",
                        "UINT8": "TYPE_UINT8", "BOOL": "TYPE_BOOL", "STRING": "TYPE_STRING"}
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_models") / "classifier.py"
_MODEL_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class TritonSettings:
    """What config.pbtxt says beyond the model's own signature.

    max_batch_size 0 turns Triton's batching off (the ONNX's own batch, fixed, is then part of
    the dims). threads: intra-op threads per instance (0: the runtime's default, all cores)."""
    backend: str = "python"
    model_name: str = TRITON_MODEL_NAME
    version: int = 1
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 2000
    instances: int = 1
    instance_kind: str | None = None         # cpu | gpu; None: gpu for tensorrt, else cpu
    threads: int = 0
    accelerator: str = "none"                # onnxruntime backend only
    python_runtime: str = "onnxruntime"      # python backend only

    @property
    def kind(self) -> str:
        return self.instance_kind or ("gpu" if self.backend == "tensorrt" else "cpu")

    def check(self) -> "TritonSettings":
        """One-line errors for settings Triton would refuse or that make no sense together."""
        if self.backend not in TRITON_BACKENDS:
            raise TinyvimError(f"unknown Triton backend {self.backend!r}: choose {', '.join(TRITON_BACKENDS)}")
        if not self.model_name or set(self.model_name) - _MODEL_NAME_CHARS or self.model_name.startswith("."):
            raise TinyvimError(f"--model-name {self.model_name!r}: use letters, digits, '_', '-' and '.' "
                               "(it is a folder name and a URL path element)")
        if not 1 <= self.version <= 2**31 - 1:
            raise TinyvimError(f"model version {self.version} must be a positive integer")
        if not 0 <= self.max_batch_size <= MAX_BATCH:
            raise TinyvimError(f"--max-batch-size must be 0 (no batching) to {MAX_BATCH}, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise TinyvimError(f"--preferred-batch-sizes {bad} must lie in 1..--max-batch-size "
                               f"({self.max_batch_size})" + (": batching is off" if not self.max_batch_size else ""))
        if not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise TinyvimError(f"--max-queue-delay-us must be 0..10000000 (10 s), got {self.max_queue_delay_us}")
        if not 1 <= self.instances <= 64:
            raise TinyvimError(f"--instances must be 1..64, got {self.instances}")
        if self.kind not in INSTANCE_KINDS:
            raise TinyvimError(f"--instance-kind {self.kind!r}: choose {' or '.join(INSTANCE_KINDS)}")
        if self.backend == "tensorrt" and self.kind != "gpu":
            raise TinyvimError("a TensorRT plan runs on a GPU only: drop --instance-kind cpu, or use "
                               "--triton-backend onnxruntime or python for CPU instances")
        if not 0 <= self.threads <= 1024:
            raise TinyvimError(f"--intra-op-threads must be 0 (runtime default) to 1024, got {self.threads}")
        if self.accelerator not in ORT_ACCELERATORS:
            raise TinyvimError(f"--ort-accelerator {self.accelerator!r}: choose {', '.join(ORT_ACCELERATORS)}")
        needs = ORT_ACCELERATORS[self.accelerator][0]
        if self.accelerator != "none" and self.backend != "onnxruntime":
            raise TinyvimError("--ort-accelerator applies to --triton-backend onnxruntime only")
        if needs and needs != self.kind:
            raise TinyvimError(f"--ort-accelerator {self.accelerator} runs on {needs.upper()} instances: "
                               f"use --instance-kind {needs}")
        if self.python_runtime not in TRITON_PYTHON_RUNTIMES:
            raise TinyvimError(f"--python-runtime {self.python_runtime!r}: choose {', '.join(TRITON_PYTHON_RUNTIMES)}")
        if self.python_runtime != "onnxruntime" and self.backend != "python":
            raise TinyvimError("--python-runtime applies to --triton-backend python only")
        return self


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as config.pbtxt states it (dims without the batch when
    Triton batches; -1 for a dynamic dimension)."""
    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: int | None                        # the ONNX's fixed batch, None when dynamic
    metadata: ExportMetadata | None


@dataclass
class RepositoryResult:
    repo: Path
    model_dir: Path
    config_path: Path
    files: list[Path]
    settings: TritonSettings
    signature: ModelSignature
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------- signature
def onnx_signature(path: str | os.PathLike) -> ModelSignature:
    """Inputs/outputs of an ONNX file with their Triton dtypes and full dims (batch first)."""
    import onnx

    from tinyvim.export import read_metadata

    proto = onnx.load(os.fspath(path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}

    def spec(value_info) -> TensorSpec:
        tensor = value_info.type.tensor_type
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
        if kind not in ONNX_TO_TRITON_DTYPE:
            raise TinyvimError(f"{path}: {value_info.name} has element type {kind}, which Triton has no type for")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(value_info.name, ONNX_TO_TRITON_DTYPE[kind], dims)

    inputs = tuple(spec(i) for i in proto.graph.input if i.name not in initializers)
    outputs = tuple(spec(o) for o in proto.graph.output)
    batches = {t.dims[0] for t in inputs + outputs}
    batch = None if -1 in batches or len(batches) != 1 else batches.pop()
    return ModelSignature(inputs, outputs, batch, read_metadata(proto))


def _batched(signature: ModelSignature, settings: TritonSettings, source: str) -> ModelSignature:
    """Drop the batch dimension from the dims when Triton batches (max_batch_size > 0)."""
    if not settings.max_batch_size:
        if signature.batch is None:
            raise TinyvimError(f"{source} has a dynamic batch: give --max-batch-size N (N >= 1) so that Triton "
                               "batches, or export a fixed --batch for --max-batch-size 0")
        return signature
    if signature.batch is not None:
        raise TinyvimError(f"{source} has a fixed batch of {signature.batch}: Triton batching "
                           f"(--max-batch-size {settings.max_batch_size}) needs a dynamic batch "
                           "(export with --dynamic-batch), or use --max-batch-size 0")
    return ModelSignature(_without_batch(signature.inputs), _without_batch(signature.outputs), None,
                          signature.metadata)


def _without_batch(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, t.data_type, t.dims[1:]) for t in specs)


# --------------------------------------------------------------------- config.pbtxt
class _Enum(str):
    """A protobuf enum value: written without quotes."""


def _pbtxt(value, indent: int = 0) -> str:
    """Protobuf text format of nested dicts (messages), lists (repeated fields), _Enum, str,
    bool and numbers; keys keep their order."""
    pad = "  " * indent
    lines = []
    for key, v in value.items():
        if isinstance(v, dict):
            lines += [f"{pad}{key} {{", _pbtxt(v, indent + 1), f"{pad}}}"]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(v):
                lines += [f"{pad}  {{", _pbtxt(item, indent + 2), f"{pad}  }}" + ("," if i < len(v) - 1 else "")]
            lines.append(f"{pad}]")
        elif isinstance(v, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(x) for x in v)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(v)}")
    return "\n".join(lines)


def _scalar(v) -> str:
    if isinstance(v, _Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))   # a JSON string literal is a valid text-format string for plain text


def _tensors(specs) -> list[dict]:
    return [{"name": t.name, "data_type": _Enum(t.data_type), "dims": list(t.dims)} for t in specs]


def _parameters(values: dict[str, str]) -> list[dict]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]


def config_message(settings: TritonSettings, signature: ModelSignature) -> dict:
    """config.pbtxt as nested dicts (field order as written)."""
    s = settings
    message: dict = {"name": s.model_name}
    message["backend"] = s.backend
    message["max_batch_size"] = s.max_batch_size
    if s.backend != "python":
        message["default_model_filename"] = TRITON_PLAN_FILE if s.backend == "tensorrt" else TRITON_ONNX_FILE
    message["input"] = _tensors(signature.inputs)
    message["output"] = _tensors(signature.outputs)
    if s.max_batch_size:
        batching: dict = {}
        if s.preferred_batch_sizes:
            batching["preferred_batch_size"] = sorted(set(s.preferred_batch_sizes))
        batching["max_queue_delay_microseconds"] = s.max_queue_delay_us
        message["dynamic_batching"] = batching
    message["instance_group"] = [{"count": s.instances, "kind": _Enum(INSTANCE_KINDS[s.kind])}]
    message["version_policy"] = {"specific": {"versions": [s.version]}}
    if s.backend == "python":
        params = {TRITON_PYTHON_PARAMS["runtime"]: s.python_runtime,
                  TRITON_PYTHON_PARAMS["onnx_file"]: TRITON_ONNX_FILE}
        if s.threads:
            params[TRITON_PYTHON_PARAMS["threads"]] = s.threads
        message["parameters"] = _parameters(params)
    elif s.backend == "onnxruntime":
        if s.threads:
            # the onnxruntime backend's own parameter names
            message["parameters"] = _parameters({"intra_op_thread_count": s.threads, "inter_op_thread_count": 1})
        field_name = ORT_ACCELERATORS[s.accelerator][1]
        if field_name:
            message["optimization"] = {"execution_accelerators": {field_name: [{"name": s.accelerator}]}}
    return message


def describe(metadata: ExportMetadata | None) -> list[str]:
    """The export's description, for the comment block at the top of config.pbtxt."""
    if metadata is None:
        return ["model: an ONNX without tinyvim metadata"]
    m = metadata
    size = "dynamic size" if m.input_size is None else format_size(m.input_size)
    return [f"model: TinyViM-{m.variant.upper()} {'backbone' if m.backbone else 'classifier'} {size}, "
            f"{m.scan} scan, {m.precision}, opset {m.opset}",
            f"weights: {m.checkpoint or f'random (seed {m.init_seed})'}"
            + (f" sha256 {m.checkpoint_sha256}" if m.checkpoint_sha256 else "") + (" (EMA)" if m.ema else ""),
            f"preprocessing: RGB in [0, 1], mean {','.join(map(str, m.mean))}, std {','.join(map(str, m.std))}, "
            f"NCHW float32"]


def render_config(settings: TritonSettings, signature: ModelSignature, notes: list[str] = ()) -> str:
    import tinyvim
    header = [f"written by tinyvim {tinyvim.__version__} (tinyvim export --fmt triton --triton-backend "
              f"{settings.backend})", *describe(signature.metadata), *notes]
    return "\n".join(f"# {line}" for line in header) + "\n" + _pbtxt(config_message(settings, signature)) + "\n"


# --------------------------------------------------------------------- writing
def tensorrt_notes(sidecar, metadata: ExportMetadata | None) -> list[str]:
    """What a Triton server must know to load a plan (`sidecar`: its EngineSidecar): it is tied to
    one TensorRT version and GPU generation, and a plugin-flavour plan needs the scan plugin
    library loaded into the server."""
    notes = [f"TensorRT plan built with TensorRT {sidecar.tensorrt_version} on {sidecar.gpu_name} (compute "
             f"capability {sidecar.compute_capability}), {sidecar.precision}: it loads only in a Triton with that "
             "TensorRT version, on that GPU generation"]
    if (metadata and metadata.scan == "plugin") or sidecar.plugin:
        notes.append("the plan contains the tinyvim::CrossSelectiveScan plugin: load its library into the server, "
                     "e.g. LD_PRELOAD=/path/to/libtinyvim_trt_plugin.so tritonserver --model-repository REPO "
                     "(build it with `tinyvim build-plugin` against the server's TensorRT)")
    return notes


def _check_engine_batches(profile: tuple[int, int] | None, settings: TritonSettings, engine: Path) -> None:
    if not settings.max_batch_size:
        return
    lo, hi = profile or (None, None)
    if lo != 1 or hi is None or hi < settings.max_batch_size:
        raise TinyvimError(f"{engine} takes batch {lo}..{hi}; Triton with --max-batch-size "
                           f"{settings.max_batch_size} sends 1..{settings.max_batch_size}: rebuild it with "
                           f"`tinyvim build-engine --min-batch 1 --max-batch {settings.max_batch_size}`")


def _engine_signature(engine: Path) -> tuple[ModelSignature, object]:
    """A plan's signature, from the ONNX it was built from (named in its sidecar)."""
    from tinyvim.backends.trt.sidecar import read_sidecar
    from tinyvim.utils import file_sha256

    sidecar = read_sidecar(engine)
    onnx_path = Path(sidecar.onnx_path)
    if not onnx_path.is_file():
        raise TinyvimError(f"the ONNX {engine} was built from ({onnx_path or 'not named in its sidecar'}) is not "
                           "there: config.pbtxt takes its input/output signature from it; put it back or rebuild "
                           "the engine")
    if file_sha256(onnx_path) != sidecar.onnx_sha256:
        raise TinyvimError(f"{onnx_path} changed since {engine} was built from it (sha256 differs): rebuild the "
                           "engine with `tinyvim build-engine`")
    return onnx_signature(onnx_path), sidecar


@dataclass
class _Staged:
    """A model folder being filled beside its destination."""
    path: Path
    version_dir: Path
    files: list[Path] = field(default_factory=list)


def write_repository(repo: str | os.PathLike, settings: TritonSettings, *, onnx: str | os.PathLike | None = None,
                     engine: str | os.PathLike | None = None, export: dict | None = None,
                     build: dict | None = None, log: Callable[[str], None] = lambda m: None) -> RepositoryResult:
    """Write (or replace) REPO/<model name> for `settings.backend`.

    The model comes from, in order: `engine` (tensorrt: a plan from `tinyvim build-engine`, with
    its sidecar), `onnx` (an existing TinyViM export, copied), or `export` (keyword arguments of
    tinyvim.export.export_onnx: the model is exported into the repository). For tensorrt without
    `engine`, the ONNX is built into a plan with tinyvim.backends.trt.builder.build_engine(**build)."""
    settings = settings.check()
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise TinyvimError(f"{repo} is a file: a Triton model repository is a folder; choose another -o")
    if engine is not None and settings.backend != "tensorrt":
        raise TinyvimError("--engine applies to --triton-backend tensorrt only")
    try:
        repo.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{settings.model_name}.", dir=repo))
        tmp.chmod(0o755)   # mkdtemp's 0700 would hide the model from a server running as another user
    except OSError as exc:
        raise TinyvimError(f"cannot write {repo}: {exc.strerror or exc} (choose another -o)") from None
    staged = _Staged(tmp, tmp / str(settings.version))
    try:
        staged.version_dir.mkdir()
        signature, notes = _stage_model(staged, settings, onnx=onnx, engine=engine, export=export, build=build,
                                        log=log)
        config_path = staged.path / "config.pbtxt"
        config_path.write_text(render_config(settings, signature, notes))
        staged.files.insert(0, config_path)
        final = repo / settings.model_name
        _replace_dir(staged.path, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = [final / f.relative_to(staged.path) for f in staged.files]
    return RepositoryResult(repo=repo, model_dir=final, config_path=final / "config.pbtxt", files=files,
                            settings=settings, signature=signature, notes=notes)


def _stage_model(staged: _Staged, settings: TritonSettings, *, onnx, engine, export, build, log):
    """Put the model file(s) into the staged version folder; returns (signature, notes)."""
    if engine is not None:
        return _stage_engine(staged, settings, Path(engine))
    if settings.backend == "tensorrt":
        from tinyvim.backends.trt.common import import_tensorrt
        import_tensorrt()   # before a minute of export: without TensorRT there is no plan to build
    with tempfile.TemporaryDirectory(prefix="tinyvim-triton-") as scratch:
        # tensorrt: the ONNX is only the plan's source; the others serve the ONNX itself
        model_onnx = (Path(scratch) if settings.backend == "tensorrt" else staged.version_dir) / TRITON_ONNX_FILE
        if onnx is not None:
            if not Path(onnx).is_file():
                raise TinyvimError(f"{onnx}: no such file")
            shutil.copyfile(onnx, model_onnx)
        elif export is not None:
            from tinyvim.export import export_onnx
            export_onnx(model_onnx, log=log, **export)
        else:
            raise TinyvimError("write_repository needs an engine, an ONNX or export settings")
        signature = onnx_signature(model_onnx)
        source = str(onnx or "the export")
        meta = signature.metadata
        if meta is not None and meta.scan == "plugin" and settings.backend != "tensorrt":
            raise TinyvimError(f"{source} has the CrossSelectiveScan plugin node, which only TensorRT runs: export "
                               f"with --scan portable for --triton-backend {settings.backend}, or use tensorrt")
        batched = _batched(signature, settings, source)
        if settings.backend == "tensorrt":
            from tinyvim.backends.trt.builder import build_engine
            plan = staged.version_dir / TRITON_PLAN_FILE
            # writes model.plan and its sidecar model.plan.json
            result = build_engine(model_onnx, plan, min_batch=1,
                                  max_batch=settings.max_batch_size or signature.batch, log=log, **(build or {}))
            staged.files += [plan, result.sidecar_path]
            return batched, tensorrt_notes(result.sidecar, meta)
    staged.files.append(model_onnx)
    notes = []
    if settings.backend == "python":
        shutil.copyfile(PYTHON_MODEL_SOURCE, staged.version_dir / "model.py")
        staged.files.append(staged.version_dir / "model.py")
        notes.append(f"python backend: {settings.python_runtime} runs {settings.version}/{TRITON_ONNX_FILE} inside "
                     "Triton's Python stub, which needs numpy and onnxruntime (or openvino) importable; "
                     "`tinyvim serve` arranges that")
    return batched, notes


def _stage_engine(staged: _Staged, settings: TritonSettings, engine: Path):
    """Copy a plan from `tinyvim build-engine` and its sidecar into the staged version folder."""
    from tinyvim.backends.trt.model_file import read_engine_info

    if not engine.is_file():
        raise TinyvimError(f"--engine {engine}: no such file")
    signature, sidecar = _engine_signature(engine)
    _check_engine_batches(read_engine_info(engine).batch_range, settings, engine)
    plan = staged.version_dir / TRITON_PLAN_FILE
    shutil.copyfile(engine, plan)
    side = sidecar.write(plan)     # model.plan.json: the same typed sidecar, beside the copied plan
    staged.files += [plan, side]
    return _batched(signature, settings, str(engine)), tensorrt_notes(sidecar, signature.metadata)


def _replace_dir(staged: Path, final: Path) -> None:
    """Move `staged` to `final` in one rename; an existing `final` is moved aside first and
    removed after (a rename cannot replace a non-empty folder)."""
    old = None
    if final.exists() or final.is_symlink():
        if not final.is_dir() or final.is_symlink():
            raise TinyvimError(f"{final} exists and is not a model folder: remove it or choose another --model-name")
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
