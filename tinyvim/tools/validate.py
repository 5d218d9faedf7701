"""Validation of an exported model (ONNX now, TensorRT engine too) against the PyTorch reference.

The reference is the UNFUSED model with the sequential scan in float32 - the original
computation - built from the same variant / checkpoint / init seed as the export, which are
read from the model's metadata (ONNX metadata_props, or the engine's JSON sidecar) and can be
overridden or filled in by the caller. The same input batches go through both; outputs are
concatenated over batches and compared with `tinyvim.tools.compare`.

JSON report (`tinyvim validate --json PATH`), schema_version 1:

    {
      "schema_version": 1,
      "tinyvim_version": "0.1.0",
      "passed": true,                           # every output passed
      "model": {"path": str, "kind": "onnx" | "openvino" | "engine", "metadata": {str: str}},
      "reference": {"backend": "torch", "variant": "s", "checkpoint": str | null, "ema": bool,
                    "backbone": bool, "img_size": [H, W], "init_seed": int},
      "backend": {"name": str,                  # a registered backend: ort, ov, trt, torch-fused, ...
                  "providers": [str] | null,    # ONNX Runtime's execution providers
                  "options": {str: value}},     # the backend options given (--ov-precision, --plugin, ...)
      "inputs": {"source": "random" | "images", "num_batches": int, "batch": int,
                 "seed": int | null, "images": [file name] | null},
      "tolerance": {"precision": "fp32" | "fp16" | "bf16" | "int8" | "fp8", "atol": float, "rtol": float,
                    "min_cosine": float | null, "min_top5": float | null},
      "outputs": [{"name": str, "shape": [int], "max_abs_err": float | null, "max_rel_err": float | null,
                   "mean_abs_err": float | null, "cosine": float | null, "top1": float | null,
                   "top5": float | null, "mismatches": int, "nonfinite_reference": int,
                   "nonfinite_candidate": int, "passed": bool, "reason": str}],
                                                # null: not computable (no finite data, shape mismatch)
      "warnings": [str],
      "seconds": {"reference": float, "backend": float},
      "per_block": {...}                        # only with per_block=True (`--per-block`):
    }                                           # tinyvim.tools.per_block.run_per_block

The tolerance's precision is the loosest of the model's and the backend's compute precision and
the precision its weights are stored in (an fp32 export validated on OpenVINO with --ov-precision
bf16 is judged as bf16, an IR with fp16-compressed weights as fp16).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from collections.abc import Callable, Iterable


from tinyvim import __version__
from tinyvim.backends.base import BaseRunner
from tinyvim.backends.model_file import ModelInfo
from tinyvim.backends.registry import (
    RunnerRequest,
    check_model,
    default_backend_for,
    get_backend,
    read_model_info,
    unused_option_warnings,
)
from tinyvim.contract import (
    INPUT_NAME,
    ModelOverrides,
    check_threads,
    format_size,
    loosest_precision,
)
from tinyvim.errors import TinyvimError
from tinyvim.tools.compare import (
    Comparison,
    ComparisonAccumulator,
    Tolerance,
    tolerance_for,
)
from tinyvim.tools.environment import default_threads
from tinyvim.tools.inputs import (
    InputRequest,
    iter_image_batches,
    iter_random_batches,
    list_images,
)
from tinyvim.tools.per_block import format_per_block, per_block_source, run_per_block
from tinyvim.tools.quantize import saturation_warning
from tinyvim.tools.reference import (
    ReferenceConfig,
    random_weights_note,
    resolve_reference,
)
from tinyvim.lazy import lazy_import
from tinyvim.utils import plural

np = lazy_import("numpy")

SCHEMA_VERSION = 1


def run_all(runner: BaseRunner, batches: Iterable[np.ndarray], input_name: str = INPUT_NAME) -> tuple[dict, float]:
    """Run every batch through an activated-on-demand runner; outputs concatenated on axis 0
    (memory grows with the batches: validation streams through `validate_runner` instead)."""
    collected: dict[str, list[np.ndarray]] = {}
    start = time.perf_counter()
    with runner:
        for batch in batches:
            for name, value in runner.infer({input_name: batch}).items():
                collected.setdefault(name, []).append(np.asarray(value))
    seconds = time.perf_counter() - start
    return {k: np.concatenate(v, axis=0) for k, v in collected.items()}, seconds


@dataclass
class ValidationResult:
    comparison: Comparison
    seconds: dict

    @property
    def passed(self) -> bool:
        return self.comparison.passed


#: images x pixels one inference call of validate may hold (32 images at 224x224, 392 at 64x64):
#: activations grow with batch x H x W (`--batch 4096` at 64x64 peaked at 6 GB unchunked), so a
#: larger batch is run in chunks of this many pixels; results are the same (streamed comparison)
CHUNK_PIXELS = 32 * 224 * 224
#: a batch slower than this gets a progress line (per-batch images/s on stderr)
PROGRESS_AFTER_S = 2.0


def chunk_images(img_size: tuple[int, int], chunk_pixels: int = CHUNK_PIXELS) -> int:
    """Images per inference call for pictures of `img_size` under `chunk_pixels` (at least 1)."""
    return max(1, chunk_pixels // (img_size[0] * img_size[1]))


def validate_runner(target: BaseRunner, reference: BaseRunner, batches: Iterable[np.ndarray],
                    tolerance: Tolerance, *, chunk: int | None = None, chunk_target: bool = True,
                    total: int | None = None, log: Callable[[str], None] | None = None) -> ValidationResult:
    """Compare `target` with `reference` on the same batches (B, 3, H, W), one batch at a time:
    both runners are active together, each batch goes through both and into a streaming
    comparison, and is then dropped - memory does not grow with the number of batches
    (`batches` may be a generator). Runners already active stay active (the caller's).

    chunk: at most this many images per inference call (peak memory is set by it, not by B);
    the target gets the whole batch when it cannot take a smaller one (chunk_target=False: a
    fixed-batch file). log: a progress line per batch (images/s of each side) once the run
    is slow enough to need one; `total` batches, if known, is said in it."""
    accumulator = ComparisonAccumulator(tolerance)
    seconds = {"reference": 0.0, "backend": 0.0}
    count = images = 0
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for key, runner in (("backend", target), ("reference", reference)):
            if not runner.is_active:
                start = time.perf_counter()
                stack.enter_context(runner)
                seconds[key] += time.perf_counter() - start
        for batch in batches:
            n = batch.shape[0]
            step = min(n, chunk) if chunk else n
            whole = None
            if step < n and not chunk_target:
                start = time.perf_counter()
                whole = target.infer({INPUT_NAME: batch})
                seconds["backend"] += time.perf_counter() - start
            spent = dict(seconds)
            for lo in range(0, n, step):
                part = batch[lo:lo + step]
                start = time.perf_counter()
                out = ({k: v[lo:lo + step] for k, v in whole.items()} if whole is not None
                       else target.infer({INPUT_NAME: part}))
                mid = time.perf_counter()
                ref = reference.infer({INPUT_NAME: part})
                seconds["backend"] += mid - start
                seconds["reference"] += time.perf_counter() - mid
                accumulator.update(ref, out)
            count += 1
            images += n
            if log is not None and time.perf_counter() - began > PROGRESS_AFTER_S:
                rates = ", ".join(f"{key} {n / max(seconds[key] - spent[key], 1e-9):.1f} images/s"
                                  for key in ("reference", "backend"))
                log(f"  batch {count}{f'/{total}' if total else ''} ({plural(images, 'image')}): {rates}")
    if not count:
        raise TinyvimError("no inputs to validate with")
    return ValidationResult(accumulator.result(), {k: round(v, 3) for k, v in seconds.items()})


def make_report(result: ValidationResult, *, info: ModelInfo, config: ReferenceConfig, backend: str,
                providers: list[str] | None, inputs: dict, precision: str, warnings: list[str],
                options: dict | None = None) -> dict:
    """The JSON document described in this module's docstring."""
    tol = result.comparison.tolerance
    return {
        "schema_version": SCHEMA_VERSION,
        "tinyvim_version": __version__,
        "passed": result.passed,
        "model": {"path": info.path, "kind": info.kind,
                  "metadata": info.metadata.to_props() if info.metadata else {}},
        "reference": {"backend": "torch", "variant": config.model.variant, "checkpoint": config.model.checkpoint,
                      "ema": config.model.ema, "backbone": config.model.backbone,
                      "img_size": list(config.inputs.size), "init_seed": config.model.weight_seed},
        "backend": {"name": backend, "providers": providers,
                    "options": {k: v for k, v in (options or {}).items() if v is not None}},
        "inputs": inputs,
        "tolerance": {"precision": precision, **asdict(tol)},
        "outputs": [o.to_dict() for o in result.comparison.outputs],
        "warnings": list(warnings),
        "seconds": result.seconds,
    }


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(report: dict) -> str:
    """Human-readable table of a report plus one summary line."""
    header = f"{'output':<8} {'shape':<18} {'max abs':>9} {'max rel':>9} {'mean abs':>9} {'cosine':>10} " \
             f"{'top1':>6} {'top5':>6}  result"
    lines = [header, "-" * len(header)]
    for o in report["outputs"]:
        lines.append(f"{o['name']:<8} {'x'.join(map(str, o['shape'])):<18} {_fmt(o['max_abs_err'], '9.2e')} "
                     f"{_fmt(o['max_rel_err'], '9.2e')} {_fmt(o['mean_abs_err'], '9.2e')} "
                     f"{_fmt(o['cosine'], '10.7f')} {_fmt(o['top1'], '6.3f')} {_fmt(o['top5'], '6.3f')}  "
                     f"{'PASS' if o['passed'] else 'FAIL: ' + o['reason']}")
    tol = report["tolerance"]
    n = report["inputs"]["num_batches"] * report["inputs"]["batch"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines.append(f"{verdict}: {report['backend']['name']} vs PyTorch reference (TinyViM-"
                 f"{report['reference']['variant'].upper()}, {plural(n, 'image')}, {tol['precision']} tolerance "
                 f"atol={tol['atol']:g} rtol={tol['rtol']:g}"
                 + (f" cosine>={tol['min_cosine']:g}" if tol.get("min_cosine") is not None else "")
                 + (f" top5>={tol['min_top5']:g}" if tol.get("min_top5") is not None else "") + ")")
    if report.get("per_block"):
        lines[:0] = [format_per_block(report["per_block"]), ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Checks:
    """How `validate` judges: atol / rtol (None: by the precision, tinyvim.tools.compare's
    table), and whether every stage's, block's and SS2D's output is compared too."""
    atol: float | None = None
    rtol: float | None = None
    per_block: bool = False

    def __post_init__(self) -> None:
        try:
            for name in ("atol", "rtol"):
                if getattr(self, name) is not None:   # finite and >= 0, before any work
                    Tolerance(**{"atol": 0.0, "rtol": 0.0, name: getattr(self, name)})
        except ValueError as exc:
            raise TinyvimError(str(exc)) from None


def validate_model(model: str | os.PathLike, *, backend: str | None = None, options: dict | None = None,
                   threads: int | None = None, reference: ModelOverrides = ModelOverrides(),
                   inputs: InputRequest = InputRequest(), checks: Checks = Checks(),
                   log: Callable[[str], None] = print) -> dict:
    """`tinyvim validate`: run `model` on `backend` (by default the one for its file kind) and
    the PyTorch reference (the model the file records, `reference` overriding or filling in)
    on the same `inputs`, batch by batch; returns the report (module docstring). Every argument
    is checked before any model is built (one-line TinyvimError). checks.per_block: also
    compare every stage's and block's output on the first batch (tinyvim.tools.per_block; the
    report gains a "per_block" section)."""
    check_threads(threads)
    info = read_model_info(model)
    target_backend = get_backend(backend) if backend else default_backend_for(info)
    check_model(target_backend, info)
    if checks.per_block:
        per_block_source(info)           # a model it cannot mark is refused before any work
    config, warnings = resolve_reference(info, reference, img_size=inputs.size, batch=inputs.batch)
    warnings += unused_option_warnings([target_backend], dict(options or {}))
    for w in warnings:
        log(f"warning: {w}")
    note = random_weights_note(config.model)
    if note:
        log(note)
    size, batch = config.inputs.size, config.inputs.batch

    if inputs.images:
        files = list_images(inputs.images, batch)

        def make_batches():
            return iter_image_batches(files, batch, size, inputs.crop_pct)
        fed = {"source": "images", "num_batches": -(-len(files) // batch), "batch": batch,
               "seed": None, "images": [p.name for p in files]}
    else:
        def make_batches():
            return iter_random_batches(inputs.num_batches, batch, size, inputs.input_seed)
        fed = {"source": "random", "num_batches": inputs.num_batches, "batch": batch, "seed": inputs.input_seed,
               "images": None}

    if info.metadata is not None and "cpu" in target_backend.devices:
        saturation = saturation_warning(info.metadata.quantization)
        if saturation:
            warnings.append(saturation)
            log(f"warning: {saturation}")
    threads = threads or default_threads()
    target = target_backend.runner(RunnerRequest(model=info, threads=threads, options=dict(options or {}), log=log))
    # a backend computing in a reduced precision (OpenVINO bf16/f16), or weights stored in one (an IR
    # written with --compress-to-fp16), is judged by that precision's tolerance
    precision = loosest_precision(info.precision, target.compute_precision,
                                  info.metadata.weights if info.metadata else None)
    try:
        tolerance = tolerance_for(precision, checks.atol, checks.rtol)
    except ValueError as exc:
        raise TinyvimError(str(exc)) from None
    torch_reference = get_backend("torch").runner(RunnerRequest(spec=config.model, threads=threads, log=log))
    log(f"validating {info.path} ({target_backend.name}) against TinyViM-{config.model.variant.upper()} "
        f"{format_size(size)} on {plural(fed['num_batches'], 'batch')} of {batch}...")
    chunk = chunk_images(size)
    result = validate_runner(target, torch_reference, make_batches(), tolerance, chunk=chunk,
                             chunk_target=info.batch_problem(min(chunk, batch)) is None,
                             total=fed["num_batches"], log=log)
    report = make_report(result, info=info, config=config, backend=target_backend.name,
                         providers=target.providers, inputs=fed, precision=precision,
                         warnings=warnings, options=options)
    if checks.per_block:
        report["per_block"] = run_per_block(info, config, backend=target_backend, batch=next(iter(make_batches())),
                                            tolerance=tolerance, precision=precision, threads=threads,
                                            options=options, log=log)
    return report
