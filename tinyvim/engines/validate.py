"""Validation of an exported model (ONNX now, TensorRT engine too) against the PyTorch reference.

The reference is the UNFUSED model with the sequential scan in float32 - the original
computation - built from the same variant / checkpoint / init seed as the export, which are
read from the model's metadata (ONNX metadata_props, or the engine's JSON sidecar) and can be
overridden or filled in by the caller. The same input batches go through both; outputs are
concatenated over batches and compared with `tinyvim.engines.compare`.

JSON report (`tinyvim validate --json PATH`), schema_version 1:

    {
      "schema_version": 1,
      "tinyvim_version": "0.1.0",
      "passed": true,                           # every output passed
      "model": {"path": str, "kind": "onnx" | "engine", "metadata": {str: str}},
      "reference": {"backend": "torch", "variant": "s", "checkpoint": str | null, "ema": bool,
                    "backbone": bool, "img_size": [H, W], "init_seed": int},
      "backend": {"name": "ort" | "trt", "providers": [str] | null},
      "inputs": {"source": "random" | "images", "num_batches": int, "batch": int,
                 "seed": int | null, "images": [file name] | null},
      "tolerance": {"precision": "fp32" | "fp16" | "bf16", "atol": float, "rtol": float,
                    "min_cosine": float | null},
      "outputs": [{"name": str, "shape": [int], "max_abs_err": float, "max_rel_err": float,
                   "mean_abs_err": float, "cosine": float, "top1": float | null,
                   "top5": float | null, "mismatches": int, "passed": bool, "reason": str}],
      "warnings": [str],
      "seconds": {"reference": float, "backend": float},
      "per_block": {...}                        # only with per_block=True (`--per-block`):
    }                                           # tinyvim.engines.per_block.run_per_block

The tolerance's precision is the looser of the model's and the backend's compute precision
(an fp32 export validated on OpenVINO with --ov-precision bf16 is judged as bf16).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from tinyvim.contract import check_batch, check_variant, parse_size
from tinyvim.engines.base import BaseRunner
from tinyvim.engines.compare import DEFAULT_TOLERANCES, Comparison, Tolerance, compare_outputs, tolerance_for
from tinyvim.engines.inputs import DEFAULT_CROP_PCT, image_batches, random_batches
from tinyvim.engines.model_info import ModelInfo, read_model_info
from tinyvim.engines.registry import RunnerRequest, default_backend_for, get_backend
from tinyvim.errors import TinyvimError
from tinyvim.utils import file_sha256

SCHEMA_VERSION = 1


@dataclass
class ReferenceConfig:
    """Everything needed to rebuild the PyTorch model an export came from."""
    variant: str
    checkpoint: str | None
    ema: bool
    backbone: bool
    img_size: tuple[int, int]
    init_seed: int
    batch: int


def resolve_reference(info: ModelInfo, *, variant: str | None = None, checkpoint: str | None = None,
                      ema: bool | None = None, backbone: bool | None = None, img_size: str | None = None,
                      init_seed: int | None = None, batch: int | None = None) -> tuple[ReferenceConfig, list[str]]:
    """Reference configuration from the model's metadata, arguments overriding / filling in.

    Returns (config, warnings); raises TinyvimError when the arguments contradict the model."""
    meta = info.metadata
    warnings: list[str] = []
    if variant is not None:
        variant = check_variant(variant)
        if meta is not None and variant != meta.variant:
            warnings.append(f"--variant {variant} overrides the model's metadata (TinyViM-{meta.variant.upper()}): "
                            "expect a failed comparison unless the metadata is wrong")
    elif meta is not None:
        variant = meta.variant
    else:
        raise TinyvimError(f"{info.path} carries no tinyvim metadata naming its variant: pass --variant s|b|l")

    if backbone is not None and backbone != info.backbone:
        raise TinyvimError(f"--{'' if backbone else 'no-'}backbone contradicts the model, whose outputs are "
                           f"{', '.join(info.output_names)}")
    backbone = info.backbone

    if img_size is not None:
        size = parse_size(img_size) if not isinstance(img_size, tuple) else img_size
        if info.fixed_size and size != info.fixed_size:
            raise TinyvimError(f"--img-size {size[0]}x{size[1]} does not match the model's input "
                               f"{info.fixed_size[0]}x{info.fixed_size[1]}")
    else:
        size = info.fixed_size or (meta.input_size if meta and meta.input_size else (224, 224))

    if batch is not None:
        check_batch(batch)
        problem = info.batch_problem(batch)
        if problem:
            raise TinyvimError(f"--batch {batch}: {problem} (export with --dynamic-batch, or build the engine "
                               "for that batch)")
    else:
        batch = info.fixed_batch or (info.batch_range[0] if info.batch_range else 1)

    recorded_ckpt = (meta.checkpoint if meta else "") or None
    recorded_sha = meta.checkpoint_sha256 if meta else ""
    if checkpoint is None and recorded_ckpt:
        if not os.path.isfile(recorded_ckpt):
            raise TinyvimError(f"the model was exported from checkpoint {recorded_ckpt}, which is not found "
                               "here: pass it with --checkpoint")
        checkpoint = recorded_ckpt
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise TinyvimError(f"--checkpoint {checkpoint}: no such file")
        if recorded_sha and file_sha256(checkpoint) != recorded_sha:
            warnings.append(f"checkpoint {checkpoint} differs from the one the model was exported from "
                            f"(sha256 {recorded_sha[:12]}...): expect a mismatch")
        if meta is not None and not recorded_sha:
            warnings.append("the model was exported with random weights, but --checkpoint was given")
    elif recorded_sha:
        raise TinyvimError("the model was exported from a checkpoint: pass it with --checkpoint")

    ema = ema if ema is not None else bool(meta and meta.ema)
    init_seed = init_seed if init_seed is not None else (meta.init_seed if meta else 0)
    return ReferenceConfig(variant, checkpoint, ema, backbone, size, init_seed, batch), warnings


def run_all(runner: BaseRunner, batches: list[np.ndarray], input_name: str = "images") -> tuple[dict, float]:
    """Run every batch through an activated-on-demand runner; outputs concatenated on axis 0."""
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


def validate_runner(target: BaseRunner, reference: BaseRunner, batches: list[np.ndarray],
                    tolerance: Tolerance) -> ValidationResult:
    """Compare `target` with `reference` on the same batches (B, 3, H, W)."""
    if not batches:
        raise TinyvimError("no inputs to validate with")
    out, t_target = run_all(target, batches)
    ref, t_ref = run_all(reference, batches)
    comparison = compare_outputs(ref, out, tolerance)
    return ValidationResult(comparison, {"reference": round(t_ref, 3), "backend": round(t_target, 3)})


def make_report(result: ValidationResult, *, info: ModelInfo, config: ReferenceConfig, backend: str,
                providers: list[str] | None, inputs: dict, precision: str, warnings: list[str],
                options: dict | None = None) -> dict:
    """The JSON document described in this module's docstring."""
    import tinyvim

    tol = result.comparison.tolerance
    return {
        "schema_version": SCHEMA_VERSION,
        "tinyvim_version": tinyvim.__version__,
        "passed": result.passed,
        "model": {"path": info.path, "kind": info.kind,
                  "metadata": info.metadata.to_props() if info.metadata else {}},
        "reference": {"backend": "torch", "variant": config.variant, "checkpoint": config.checkpoint,
                      "ema": config.ema, "backbone": config.backbone, "img_size": list(config.img_size),
                      "init_seed": config.init_seed},
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
                 f"{report['reference']['variant'].upper()}, {n} images, {tol['precision']} tolerance "
                 f"atol={tol['atol']:g} rtol={tol['rtol']:g})")
    if report.get("per_block"):
        from tinyvim.engines.per_block import format_per_block
        lines[:0] = [format_per_block(report["per_block"]), ""]
    return "\n".join(lines)


def validate_model(model: str | os.PathLike, *, backend: str | None = None, options: dict | None = None,
                   threads: int | None = None, variant: str | None = None, checkpoint: str | None = None,
                   ema: bool | None = None, backbone: bool | None = None, img_size: str | None = None,
                   init_seed: int | None = None, batch: int | None = None, num_inputs: int = 4, seed: int = 0,
                   images: str | os.PathLike | None = None, crop_pct: float = DEFAULT_CROP_PCT,
                   atol: float | None = None, rtol: float | None = None, per_block: bool = False,
                   log: Callable[[str], None] = print) -> dict:
    """`tinyvim validate`: run `model` on `backend` (by default the one for its file kind) and
    the PyTorch reference on the same inputs; returns the report (module docstring).
    per_block: also compare every stage's and block's output on the first batch
    (tinyvim.engines.per_block; the report gains a "per_block" section)."""
    from tinyvim.engines.profile import default_threads

    info = read_model_info(model)
    target_backend = get_backend(backend) if backend else default_backend_for(info)
    target_backend.check_model(info)
    if num_inputs < 1:
        raise TinyvimError(f"--num-inputs must be >= 1, got {num_inputs}")
    config, warnings = resolve_reference(info, variant=variant, checkpoint=checkpoint, ema=ema, backbone=backbone,
                                         img_size=img_size, init_seed=init_seed, batch=batch)
    for w in warnings:
        log(f"warning: {w}")

    if images:
        batches, names = image_batches(images, config.batch, config.img_size, limit=None, crop_pct=crop_pct)
        inputs = {"source": "images", "num_batches": len(batches), "batch": config.batch, "seed": None,
                  "images": names}
    else:
        batches = random_batches(num_inputs, config.batch, config.img_size, seed)
        inputs = {"source": "random", "num_batches": num_inputs, "batch": config.batch, "seed": seed, "images": None}

    threads = threads or default_threads()
    target = target_backend.runner(RunnerRequest("validate", model=info, threads=threads, options=dict(options or {}),
                                                 log=log))
    # a backend computing in a reduced precision (OpenVINO bf16/f16) is judged by that precision's tolerance
    precision = max(info.precision, getattr(target, "compute_precision", info.precision),
                    key=list(DEFAULT_TOLERANCES).index)
    try:
        tolerance = tolerance_for(precision, atol, rtol)
    except ValueError as exc:
        raise TinyvimError(str(exc)) from None
    reference = get_backend("torch").runner(RunnerRequest(
        "reference", variant=config.variant, checkpoint=config.checkpoint, ema=config.ema, backbone=config.backbone,
        init_seed=config.init_seed, threads=threads, log=log))
    log(f"validating {info.path} ({target_backend.name}) against TinyViM-{config.variant.upper()} "
        f"{config.img_size[0]}x{config.img_size[1]} on {inputs['num_batches']} batch(es) of {config.batch}...")
    result = validate_runner(target, reference, batches, tolerance)
    report = make_report(result, info=info, config=config, backend=target_backend.name,
                         providers=getattr(target, "providers", None), inputs=inputs, precision=precision,
                         warnings=warnings, options=options)
    if per_block:
        from tinyvim.engines.per_block import run_per_block
        report["per_block"] = run_per_block(info, config, backend=target_backend, batch=batches[0],
                                            tolerance=tolerance, precision=precision, threads=threads,
                                            options=options, log=log)
    return report
