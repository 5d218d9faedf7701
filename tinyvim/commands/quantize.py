"""`tinyvim quantize MODEL.onnx`: explicit INT8/FP8 quantization into a Q/DQ ONNX
(tinyvim.tools.quantize does the work; this module parses and prints)."""
from __future__ import annotations

from pathlib import Path

import click

from tinyvim.commands.common import ProgressBar, echo_err, img_size_option, json_option, one_line_errors
from tinyvim.contract import (
    CALIBRATION_METHODS,
    DEFAULT_PERCENTILE,
    DEFAULT_QDQ_PLACEMENT,
    QDQ_PLACEMENTS,
    QUANTIZED_PRECISIONS,
)
from tinyvim.errors import TinyvimError
from tinyvim.tools.accuracy_budget import budget_report, quantize_to_budget
from tinyvim.tools.inputs import DEFAULT_CROP_PCT
from tinyvim.tools.quantize import CalibrationRequest, quantization_report, quantize_onnx
from tinyvim.utils import atomic_write_json, check_output_paths


#: regions of the budget's ranking shown on screen (--json has them all)
RANKING_SHOWN = 6


def default_output(model: str, dtype: str) -> str:
    """`model.onnx` -> `model.int8.onnx` beside it."""
    p = Path(model)
    return str(p.with_name(f"{p.stem}.{dtype}.onnx"))


def _ranking(ranking: list[dict]) -> str:
    """The restore order on one line: each candidate's gain (what restoring it alone takes off the
    mean squared logit error) and entry (where its error enters the trunk, `validate --per-block`)."""
    shown = [f"{r['region']} gain {r['gain']:.3g}" + ("" if r["entry"] is None else f", entry {r['entry']:+.3f}")
             for r in ranking if r["gain"] is not None][:RANKING_SHOWN]
    more = len(ranking) - len(shown)
    return "; ".join(shown) + (f"; then {more} more (by entry; --json lists them)" if more else "")


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", "calib_dir", type=click.Path(), default=None,
              help="Folder of calibration pictures (preprocessed like ImageNet evaluation).")
@click.option("--calib-random", type=int, default=None, metavar="N",
              help="Calibrate on N seeded random images instead (for a try-out: real pictures give real ranges).")
@click.option("--calib-max", type=int, default=512, show_default=True, help="Use at most this many --calib pictures.")
@click.option("--calib-method", type=click.Choice(CALIBRATION_METHODS), default="minmax", show_default=True,
              help="Activation range: max |x| over the calibration set, a percentile of |x| (clips rare "
                   "outliers), or entropy: the KL-optimal threshold of |x| (TensorRT's entropy calibration); the "
                   "last two take two passes over the pictures.")
@click.option("--percentile", type=float, default=None,
              help=f"With --calib-method percentile: which one, in [90, 100) [default: {DEFAULT_PERCENTILE:g}].")
@click.option("--dtype", type=click.Choice(QUANTIZED_PRECISIONS), default="int8", show_default=True,
              help="int8, or fp8 (float8e4m3fn Q/DQ, for Hopper/Blackwell GPUs; opset >= 19).")
@click.option("--reduce-range", is_flag=True,
              help="7-bit int8 weights, for x86 CPUs without VNNI (AVX2: their int8 kernels saturate on 8-bit "
                   "weights). Default: 8 bits (TensorRT, VNNI/AMX CPUs).")
@click.option("--placement", type=click.Choice(QDQ_PLACEMENTS), default=DEFAULT_QDQ_PLACEMENT, show_default=True,
              help="Which weighted layers get Q/DQ: lean leaves out the tiny ones that compute the scan's operands "
                   "(x_proj, dt_proj), so no Q/DQ sits on the tensors feeding the scan; all quantizes every one.")
@img_size_option(default="the model's, else 224; for a dynamic-size export")
@click.option("--seed", "calib_seed", type=int, default=0, show_default=True,
              help="Seed of the --calib-random calibration images.")
@click.option("--crop-pct", type=float, default=DEFAULT_CROP_PCT, show_default=True,
              help="Centre-crop fraction for --calib.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads for calibration [default: all cores].")
@click.option("--max-drop", type=float, default=None,
              help="Accuracy budget: keep the fewest regions (stem, block branches, downsamplers, head) in float so "
                   "that top-1 on --data is at most this many points below the fp32 model's; without --data, top-1 "
                   "agreement with the fp32 model on every 4th --calib picture (held out of calibration).")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="With --max-drop: held-out labelled pictures (layouts of `tinyvim evaluate`), not the --calib ones.")
@click.option("--quiet", is_flag=True, help="No progress line during calibration.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output path [default: MODEL.<dtype>.onnx].")
@json_option
@one_line_errors
def quantize(model, calib_dir, calib_random, calib_max, calib_method, percentile, dtype, reduce_range, placement,
             img_size, calib_seed, crop_pct, threads, max_drop, data, quiet, output, json_path):
    """Quantize an fp32 TinyViM ONNX into an explicit Q/DQ ONNX (symmetric, per-channel weights on
    Conv/MatMul/Gemm; scan, softplus, LayerNorm statistics and plugin nodes stay fp32) that
    TensorRT, ONNX Runtime and OpenVINO all run. Calibration runs on the CPU."""

    output = output or default_output(model, dtype)
    check_output_paths({"-o": output, "--json": json_path}, inputs={"MODEL": model})
    calibration = CalibrationRequest(calib_dir, calib_random, calib_seed, calib_max, crop_pct, img_size, calib_method,
                                     percentile)
    args = dict(dtype=dtype, reduce_range=reduce_range, threads=threads, placement=placement,
                log=lambda m: echo_err(f"  {m} ..."), progress=None if quiet else ProgressBar(label="  calibration "))
    budget = None
    if data is not None and max_drop is None:
        raise TinyvimError("--data is the accuracy budget's held-out pictures: give --max-drop X with it")
    if max_drop is not None:
        result, budget = quantize_to_budget(model, output, calibration, max_drop=max_drop, data=data, **args)
    else:
        result = quantize_onnx(model, output, calibration, **args)
    for warning in result.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    quant = result.metadata.quantization
    click.echo(f"quantized {result.path}  ({result.size_bytes / 2**20:.1f} MiB, {result.num_nodes} nodes, "
               f"{result.seconds['total']:.1f} s)")
    click.echo(f"  {dtype}      {len(result.quantized)} layers: Q/DQ on their inputs, weights per output channel"
               f" ({quant.weight_bits}-bit)" if dtype == "int8" else
               f"  {dtype}       {len(result.quantized)} layers: float8e4m3fn Q/DQ, weights per output channel")
    if result.kept_fp32:
        reasons: dict[str, list[str]] = {}
        for name, why in result.kept_fp32.items():
            reasons.setdefault(why, []).append(name)
        for why, names in reasons.items():
            click.echo(f"  fp32      {len(names)} weighted layer(s): {why}")
    click.echo(f"  calib     {quant.samples} {'pictures' if quant.calibration == 'images' else 'random images'}"
               f"{'' if quant.seed is None else f' (seed {quant.seed})'}, ranges by {quant.method}")
    if budget is not None:
        if budget.measure == "top1":
            click.echo(f"  budget    top-1 on {budget.pictures} held-out pictures: fp32 {budget.fp32 * 100:.2f} %, "
                       f"plain {dtype} {budget.int8 * 100:.2f} % ({-budget.int8_drop_points:+.2f}), this file "
                       f"{budget.final * 100:.2f} % ({-budget.drop_points:+.2f}; --max-drop {max_drop:g})")
        else:
            click.echo(f"  budget    top-1 agreement with the fp32 model on {budget.pictures} held-out --calib pictures "
                       f"(no labels: {budget.source}): plain {dtype} {budget.int8 * 100:.2f} % "
                       f"({-budget.int8_drop_points:+.2f}), this file {budget.final * 100:.2f} % "
                       f"({-budget.drop_points:+.2f}; --max-drop {max_drop:g})")
        if budget.ranking:
            click.echo(f"  ranking   {_ranking(budget.ranking)}")
        if budget.kept_float:
            click.echo(f"  float     {len(budget.kept_float)} region(s) kept in fp32: {', '.join(budget.kept_float)}; "
                       f"p50 at batch 1 on ONNX Runtime {budget.latency_ms['plain']:.2f} ms plain -> "
                       f"{budget.latency_ms['budget']:.2f} ms")
        else:
            click.echo("  float     no region needed: plain quantization meets the budget")
    click.echo("  next      tinyvim validate " + str(result.path) + " [--backend ov] [--per-block]; "
               "tinyvim build-engine " + str(result.path) + f" --precision {dtype}")
    if json_path:
        report = quantization_report(result)
        if budget is not None:
            report["budget"] = budget_report(budget, max_drop)
        atomic_write_json(json_path, report)
