"""A Triton Inference Server model repository for a TinyViM export (`export --fmt triton`).

    REPO/<model>/config.pbtxt          written from the export's signature and metadata
    REPO/<model>/<version>/model.onnx  onnxruntime and python backends
    REPO/<model>/<version>/model.py    python backend (tinyvim/serve/triton_models/classifier.py)
    REPO/<model>/<version>/model.plan  tensorrt backend, with its sidecar model.plan.json

Inputs/outputs (names, dtypes, dims without the batch) come from the ONNX graph, the model's
description (variant, size, mean/std, scan, precision) from its validated ExportMetadata.

The model folder is built in a staging folder *beside* the repository (same filesystem, so one
rename moves it in; outside it, so a server polling the repository never sees it, whole or
half) and renamed into place. Only where the repository's parent is another filesystem (a
mount point) or not writable is it staged inside the repository, as a hidden folder, which
`tinyvim serve` skips. The staging folder goes on any error, Ctrl-C, SIGTERM or SIGHUP; its name
records host and PID, and the next write (or `tinyvim serve`) removes those of killed runs.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator, Mapping


from tinyvim import __version__
from tinyvim.backends.trt.builder import build_engine
from tinyvim.backends.trt.common import import_tensorrt
from tinyvim.backends.trt.model_file import read_engine_info
from tinyvim.backends.trt.sidecar import EngineSidecar, read_sidecar
from tinyvim.contract import (
    PLUGIN_SCAN,
    SCAN_PLUGIN,
    TRITON_FORMAT,
    TRITON_ONNX_FILE,
    TRITON_PLAN_FILE,
    TRITON_PYTHON_PARAMS,
    ExportMetadata,
    InputSpec,
    format_size,
)
from tinyvim.errors import TinyvimError
from tinyvim.export import export_onnx, read_metadata
from tinyvim.interrupt import unwind_on_termination
from tinyvim.plugins.build import LIB_NAMES
from tinyvim.serve.settings import (
    FLAG,
    INSTANCE_KINDS,
    ORT_ACCELERATORS,
    TritonSettings,
    given_options,
    settings_from_options,
)
from tinyvim.utils import TEMP_MARK, file_sha256, temp_owner_gone, temp_tag
from tinyvim.lazy import lazy_import

onnx = lazy_import("onnx")

DEFAULT_REPOSITORY = "model_repository"
#: ONNX TensorProto element type name -> Triton data type
ONNX_TO_TRITON_DTYPE = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "BFLOAT16": "TYPE_BF16",
                        "DOUBLE": "TYPE_FP64", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "INT8": "TYPE_INT8",
                        "UINT8": "TYPE_UINT8", "BOOL": "TYPE_BOOL", "STRING": "TYPE_STRING"}
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_models") / "classifier.py"
#: how much of the repository's and the model's names a staging folder's name keeps (names are <= 255 bytes)
_NAME_KEEP = 60


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

    def to_json(self) -> dict:
        """The `export --fmt triton --json` document."""
        s = self.settings
        return {"repository": str(self.repo), "model_dir": str(self.model_dir), "files": [str(f) for f in self.files],
                "config": self.config_path.read_text(),
                "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()},
                "metadata": self.signature.metadata.to_props() if self.signature.metadata else None,
                "notes": self.notes}


# --------------------------------------------------------------------- signature
def onnx_signature(path: str | os.PathLike) -> ModelSignature:
    """Inputs/outputs of an ONNX file with their Triton dtypes and full dims (batch first)."""
    try:
        proto = onnx.load(os.fspath(path), format="protobuf", load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's decode errors have no common public base
        raise TinyvimError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
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
            raise TinyvimError(f"{source} has a dynamic batch: give {FLAG['max_batch_size']} N (N >= 1) so that "
                               f"Triton batches, or export a fixed --batch for {FLAG['max_batch_size']} 0")
        return signature
    if signature.batch is not None:
        raise TinyvimError(f"{source} has a fixed batch of {signature.batch}: Triton batching "
                           f"({FLAG['max_batch_size']} {settings.max_batch_size}) needs a dynamic batch "
                           f"(export with --dynamic-batch), or use {FLAG['max_batch_size']} 0")
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
    header = [f"written by tinyvim {__version__} (tinyvim export --fmt {TRITON_FORMAT} {FLAG['backend']} "
              f"{settings.backend})", *describe(signature.metadata), *notes]
    return "\n".join(f"# {line}" for line in header) + "\n" + _pbtxt(config_message(settings, signature)) + "\n"


# --------------------------------------------------------------------- TensorRT plans
def tensorrt_notes(sidecar: EngineSidecar, metadata: ExportMetadata | None) -> list[str]:
    """What a Triton server must know to load a plan: it is tied to one TensorRT version and GPU
    generation, and a plugin-flavour plan needs the scan plugin library loaded into the server."""
    notes = [f"TensorRT plan built with TensorRT {sidecar.tensorrt_version} on "
             f"{sidecar.gpu_name} (compute capability {sidecar.compute_capability}), "
             f"{sidecar.precision}: it loads only in a Triton with that TensorRT version, on that GPU "
             "generation"]
    if (metadata and metadata.scan == PLUGIN_SCAN) or sidecar.plugin:
        notes.append(f"the plan contains the {SCAN_PLUGIN.namespace}::{SCAN_PLUGIN.op_type} plugin: load its "
                     f"library into the server, e.g. LD_PRELOAD=/path/to/{LIB_NAMES['tinyvim_trt_plugin']} "
                     "tritonserver --model-repository REPO (build it with `tinyvim build-plugin` against the "
                     "server's TensorRT)")
    return notes


def _check_engine_batches(profile: tuple[int, int] | None, settings: TritonSettings, engine: Path) -> None:
    if not settings.max_batch_size:
        return
    lo, hi = profile or (None, None)
    if lo != 1 or hi is None or hi < settings.max_batch_size:
        raise TinyvimError(f"{engine} takes batch {lo}..{hi}; Triton with {FLAG['max_batch_size']} "
                           f"{settings.max_batch_size} sends 1..{settings.max_batch_size}: rebuild it with "
                           f"`tinyvim build-engine --min-batch 1 --max-batch {settings.max_batch_size}`")


def _engine_signature(engine: Path) -> tuple[ModelSignature, EngineSidecar]:
    """A plan's signature, from the ONNX it was built from (named in its sidecar)."""
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


# --------------------------------------------------------------------- `export --fmt triton`
def check_format_options(fmt: str, output: str | None, options: Mapping[str, Any]) -> None:
    """Before any work: the Triton options only with --fmt triton; -o a folder only for triton."""
    given = given_options(options)
    if fmt != TRITON_FORMAT and given:
        raise TinyvimError(f"{', '.join(given)} apply to --fmt {TRITON_FORMAT} only")
    if fmt != TRITON_FORMAT and output and Path(output).is_dir():
        raise TinyvimError(f"-o {output} is a folder: --fmt {fmt} writes one file; a Triton model repository "
                           f"is --fmt {TRITON_FORMAT}")
    if fmt == TRITON_FORMAT and output and Path(output).exists() and not Path(output).is_dir():
        raise TinyvimError(f"-o {output} is a file: --fmt {TRITON_FORMAT} writes a model repository folder")


def triton_export_args(settings: TritonSettings, export: Mapping[str, Any]) -> dict:
    """The batch policy: `export` (keyword arguments of export_onnx) as the repository needs it.
    Triton batching (max_batch_size N) needs a dynamic batch, which it fills with 1..N images;
    without batching (0) the model takes the ONNX's fixed batch. Conflicts are refused here,
    before a minute of export."""
    inputs = export.get("inputs", InputSpec())
    batch, dynamic = inputs.batch, inputs.dynamic_batch
    if settings.max_batch_size:
        if batch not in (1, None):
            raise TinyvimError(f"--batch {batch}: with --fmt {TRITON_FORMAT} the batch is dynamic up to "
                               f"{FLAG['max_batch_size']} ({settings.max_batch_size}), Triton batches requests; "
                               f"for a fixed batch give {FLAG['max_batch_size']} 0")
        return {**export, "inputs": inputs.with_(batch=None)}
    if dynamic:
        raise TinyvimError(f"--dynamic-batch with {FLAG['max_batch_size']} 0: without Triton batching the model "
                           f"takes the ONNX's fixed batch: drop --dynamic-batch (and give --batch N), or let Triton "
                           f"batch with {FLAG['max_batch_size']} N")
    return dict(export)


def export_repository(repo: str | os.PathLike | None, options: Mapping[str, Any], export: Mapping[str, Any], *,
                      log: Callable[[str], None] = lambda m: None) -> RepositoryResult:
    """`export --fmt triton`: REPO (default DEFAULT_REPOSITORY) from the Triton options
    (`options`: TRITON_OPTIONS keywords -> values, None for unset) and the export's own
    (`export`: arguments of tinyvim.export.export_onnx by name: model, inputs, scan, precision,
    opset). With options['engine'] the plan is served and `export` does not apply."""
    settings = settings_from_options(options)
    repo = repo or DEFAULT_REPOSITORY
    engine = options.get("engine")
    if engine:
        result = write_repository(repo, settings, engine=engine, log=log)
        result.notes.insert(0, f"{FLAG['engine']}: the plan's own metadata describes the model; the export "
                               "options did not apply")
        return result
    export = triton_export_args(settings, export)
    build = {"precision": export["precision"]} if settings.backend == "tensorrt" and "precision" in export else None
    return write_repository(repo, settings, export=export, build=build, log=log)


# --------------------------------------------------------------------- writing
@dataclass
class _Staged:
    """A model folder being filled in a staging folder (`root`, removed afterwards)."""
    root: Path
    model_dir: Path
    version_dir: Path
    files: list[Path] = field(default_factory=list)


def write_repository(repo: str | os.PathLike, settings: TritonSettings, *, onnx: str | os.PathLike | None = None,
                     engine: str | os.PathLike | None = None, export: dict | None = None,
                     build: dict | None = None, log: Callable[[str], None] = lambda m: None) -> RepositoryResult:
    """Write (or replace) REPO/<model name> for `settings.backend`.

    The model comes from, in order: `engine` (tensorrt: a plan from `tinyvim build-engine`, with
    its sidecar), `onnx` (an existing TinyViM export, copied), or `export` (keyword arguments of
    tinyvim.export.export_onnx: the model is exported into the repository). For tensorrt without
    `engine`, the ONNX is built into a plan with tinyvim.backends.trt.builder.build_engine(**build).
    Every check that can fail runs before the export or the build."""
    settings = settings.check()
    repo = Path(repo)
    _check_destination(repo, settings.model_name)
    if engine is not None and settings.backend != "tensorrt":
        raise TinyvimError(f"{FLAG['engine']} applies to {FLAG['backend']} tensorrt only")
    if engine is None and onnx is None and export is None:
        raise TinyvimError("write_repository needs an engine, an ONNX or export settings")
    if engine is not None and not Path(engine).is_file():
        raise TinyvimError(f"{FLAG['engine']} {engine}: no such file")
    if engine is None and onnx is not None and not Path(onnx).is_file():
        raise TinyvimError(f"{onnx}: no such file")
    if engine is None and onnx is None:
        _check_export_fits(settings, export)
    if engine is None and settings.backend == "tensorrt":
        import_tensorrt()   # before a minute of export: without TensorRT there is no plan to build
    with unwind_on_termination(), _staging(repo, settings) as staged:
        try:
            signature, notes = _stage_model(staged, settings, onnx=onnx, engine=engine, export=export, build=build,
                                            log=log)
            config_path = staged.model_dir / "config.pbtxt"
            config_path.write_text(render_config(settings, signature, notes))
            staged.files.insert(0, config_path)
            final = _install(staged, repo / settings.model_name)
        except OSError as exc:
            raise _os_error(exc, repo, staged.root) from None
        except TinyvimError as exc:     # e.g. the export's own writer: name the model's place, not the staging's
            if str(staged.model_dir) not in str(exc):
                raise
            raise TinyvimError(str(exc).replace(str(staged.model_dir), str(repo / settings.model_name)),
                               exit_code=exc.exit_code) from None
    files = [final / f.relative_to(staged.model_dir) for f in staged.files]
    return RepositoryResult(repo=repo, model_dir=final, config_path=final / "config.pbtxt", files=files,
                            settings=settings, signature=signature, notes=notes)


def _check_destination(repo: Path, model_name: str) -> None:
    try:
        os.stat(repo)
    except FileNotFoundError:
        pass
    except OSError as exc:   # ELOOP (a symlink loop), EACCES, ...: pathlib would raise RuntimeError later
        raise TinyvimError(f"cannot write the repository {repo}: {exc.strerror or exc} (choose another -o)") from None
    if repo.exists() and not repo.is_dir():
        raise TinyvimError(f"{repo} is a file: a Triton model repository is a folder; choose another -o")
    final = repo / model_name
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise TinyvimError(f"{final} exists and is not a model folder: remove it or choose another "
                           f"{FLAG['model_name']}")


def _check_export_fits(settings: TritonSettings, export: Mapping[str, Any]) -> None:
    """What the export would produce must suit the settings (else the mismatch shows only after it)."""
    if export.get("scan") == PLUGIN_SCAN and settings.backend != "tensorrt":
        raise TinyvimError(f"--scan {PLUGIN_SCAN} puts {SCAN_PLUGIN.op_type} nodes in the ONNX, which only "
                           f"TensorRT runs: use --scan portable for {FLAG['backend']} {settings.backend}, or "
                           f"{FLAG['backend']} tensorrt")
    dynamic = export.get("inputs", InputSpec()).dynamic_batch
    if dynamic != bool(settings.max_batch_size):
        triton_export_args(settings, export)     # raises, naming the fix
        raise TinyvimError(f"Triton batching ({FLAG['max_batch_size']} {settings.max_batch_size}) needs an export "
                           "with a dynamic batch (InputSpec batch None)")


def _os_error(exc: OSError, repo: Path, root: Path) -> TinyvimError:
    """An OSError while staging or installing as one line: what could not be written (or read)."""
    reason = exc.strerror or str(exc)
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    names = [Path(os.path.abspath(n)) for n in (exc.filename, exc.filename2) if isinstance(n, (str, os.PathLike))]
    ours = [Path(os.path.abspath(root)), Path(os.path.abspath(repo))]
    if names and not full and not any(o == n or o in n.parents for n in names for o in ours):
        return TinyvimError(f"cannot read {names[0]}: {reason}")
    return TinyvimError(f"cannot write the model repository {repo}: {reason} "
                        f"({'free some space or ' if full else ''}choose another -o)")


def _staging_parent(repo: Path) -> Path:
    """Where to stage: beside the repository when that is the same filesystem and writable
    (a server never sees the staging folder), else inside it (hidden). A repository yet to be
    made is staged in its nearest existing ancestor, where its folders will be created."""
    repo = Path(os.path.abspath(repo))
    if not repo.is_dir():
        anchor = next((p for p in repo.parents if p.exists()), Path("/"))
        if not anchor.is_dir():
            raise TinyvimError(f"cannot write {repo}: {anchor} is not a folder (choose another -o)")
        return anchor
    real = repo.resolve()
    parent = real.parent
    if parent != real and os.stat(parent).st_dev == os.stat(real).st_dev and os.access(parent, os.W_OK | os.X_OK):
        return parent
    return real


def remove_stale_staging(folder: str | os.PathLike) -> list[Path]:
    """Remove the staging folders in `folder` of `export --fmt triton` runs that were killed
    (SIGKILL, a power cut): their PID, recorded in the name, is gone. A live run's is kept."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(TEMP_MARK)):
            continue
        tag = entry.name[:-len(TEMP_MARK)].rsplit(".", 1)[-1]
        if temp_owner_gone(tag) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def _staging(repo: Path, settings: TritonSettings) -> Iterator[_Staged]:
    parent = _staging_parent(repo)
    remove_stale_staging(parent)
    if repo.is_dir() and parent != repo.resolve():
        remove_stale_staging(repo)          # left by a run that had to stage inside
    name = f".{(repo.resolve().name or 'repository')[:_NAME_KEEP]}.{settings.model_name[:_NAME_KEEP]}.{temp_tag()}"
    root = parent / (name + TEMP_MARK)
    try:
        root.mkdir()
        model_dir = root / "model"
        version_dir = model_dir / str(settings.version)
        version_dir.mkdir(parents=True)
    except OSError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise TinyvimError(f"cannot write {repo}: {exc.strerror or exc} (choose another -o)") from None
    try:
        yield _Staged(root, model_dir, version_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _install(staged: _Staged, final: Path) -> Path:
    """Move the staged model folder to `final` in one rename. An existing `final` is moved into
    the staging folder first (a rename cannot replace a non-empty folder) and removed with it;
    put back if the second rename fails."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = staged.root / "old"
        os.replace(final, old)
    try:
        os.replace(staged.model_dir, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        raise
    return final


def _stage_model(staged: _Staged, settings: TritonSettings, *, onnx, engine, export, build, log):
    """Put the model file(s) into the staged version folder; returns (signature, notes)."""
    if engine is not None:
        return _stage_engine(staged, settings, Path(engine))
    # tensorrt: the ONNX is only the plan's source (kept in the staging folder, out of the model's);
    # the other backends serve the ONNX itself
    if settings.backend == "tensorrt":
        (staged.root / "source").mkdir()
        model_onnx = staged.root / "source" / TRITON_ONNX_FILE
    else:
        model_onnx = staged.version_dir / TRITON_ONNX_FILE
    if onnx is not None:
        shutil.copyfile(onnx, model_onnx)
    else:
        export_onnx(model_onnx, log=log, **export)
    signature = onnx_signature(model_onnx)
    source = str(onnx or "the export")
    meta = signature.metadata
    if meta is not None and meta.scan == PLUGIN_SCAN and settings.backend != "tensorrt":
        raise TinyvimError(f"{source} has the {SCAN_PLUGIN.op_type} plugin node, which only TensorRT runs: export "
                           f"with --scan portable for {FLAG['backend']} {settings.backend}, or use tensorrt")
    batched = _batched(signature, settings, source)
    if settings.backend == "tensorrt":
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
    signature, sidecar = _engine_signature(engine)
    _check_engine_batches(read_engine_info(engine).batch_range, settings, engine)
    plan = staged.version_dir / TRITON_PLAN_FILE
    shutil.copyfile(engine, plan)
    side = staged.version_dir / (TRITON_PLAN_FILE + ".json")
    sidecar.write(plan)     # model.plan.json: the same typed sidecar, beside the copied plan
    staged.files += [plan, side]
    return _batched(signature, settings, str(engine)), tensorrt_notes(sidecar, signature.metadata)
