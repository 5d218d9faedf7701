"""CLI commands `validate`, `profile` and `build-engine`: parse, call tinyvim.tools / tinyvim.backends, print.

Expected failures are TinyvimError (one line, exit code 2 unless it says otherwise); a
validation that runs but is out of tolerance exits 1.
"""
from __future__ import annotations

import click

from tinyvim.backends.registry import backend_names, get_backend
from tinyvim.backends.trt.builder import ProfileRequest
from tinyvim.backends.trt.builder import build_engine as build
from tinyvim.commands.backend_options import backend_options as _backend_options
from tinyvim.commands.backend_options import pop_backend_options as _pop_backend_options
from tinyvim.commands.common import allow_nonfinite_option, img_size_option, model_options
from tinyvim.commands.common import echo_err as _err
from tinyvim.commands.common import int_list as _int_list
from tinyvim.commands.common import one_line_errors as _one_line_errors
from tinyvim.contract import COMPUTE_PRECISIONS, FILE_KINDS, FP32, VARIANTS, ModelOverrides
from tinyvim.tools import profile as prof
from tinyvim.tools.inputs import DEFAULT_CROP_PCT, InputRequest
from tinyvim.tools.validate import Checks, format_table, validate_model
from tinyvim.utils import atomic_write_json, check_output_paths


def _defaults_by_kind() -> str:
    """'ort for .onnx, trt for .engine/.plan/.trt, ...' from the registry and the contract."""
    return ", ".join(f"{b.name} for {'/'.join(FILE_KINDS[k])}" for b in map(get_backend, backend_names())
                     for k in b.default_for)


# --------------------------------------------------------------------- validate
@click.command("validate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--backend", default=None, metavar="NAME",
              help=f"Backend to check: {', '.join(n for n in backend_names() if get_backend(n).runs_files)} "
                   f"[default: by the file: {_defaults_by_kind()}].")
@click.option("--threads", type=int, default=None, help="Intra-op threads for both runs [default: all cores].")
@_backend_options
@model_options(from_file=True, seed_flag="--init-seed", into="reference")
@img_size_option(default="from the model")
@click.option("--batch", type=int, default=None, help="Images per inference [default: the model's batch, or 1].")
@click.option("--num-inputs", type=int, default=4, show_default=True, help="Number of random input batches.")
@click.option("--seed", "input_seed", type=int, default=0, show_default=True,
              help="Seed of the random input batches (the reference's weights: --init-seed).")
@click.option("--images", type=click.Path(), default=None,
              help="Folder of pictures to use instead of random inputs (ImageNet preprocessing).")
@click.option("--crop-pct", type=float, default=DEFAULT_CROP_PCT, show_default=True,
              help="Centre-crop fraction for --images.")
@click.option("--atol", type=float, default=None, help="Absolute tolerance [default: by precision].")
@click.option("--rtol", type=float, default=None, help="Relative tolerance [default: by precision].")
@click.option("--per-block", is_flag=True, default=False,
              help="Also compare every stage's, block's and SS2D's output (first batch) and show where error jumps.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the JSON report.")
@click.pass_context
@_one_line_errors
def validate(ctx, model, json_path, backend, threads, img_size, batch, num_inputs, input_seed, images, crop_pct,
             atol, rtol, per_block, reference, **kwargs):
    """Check an exported MODEL (.onnx, .xml or .engine) against the PyTorch reference.

    Exit status: 0 within tolerance, 1 out of tolerance, 2 bad input or missing dependency."""
    check_output_paths({"--json": json_path}, inputs={"MODEL": model, "--checkpoint": reference.checkpoint})
    options = _pop_backend_options(kwargs)
    report = validate_model(model, backend=backend, options=options, threads=threads, reference=reference,
                            inputs=InputRequest(img_size, batch, num_inputs, input_seed, images, crop_pct),
                            checks=Checks(atol, rtol, per_block), log=_err)
    click.echo(format_table(report))
    if json_path:
        atomic_write_json(json_path, report)
    ctx.exit(0 if report["passed"] else 1)


# --------------------------------------------------------------------- profile
@click.command("profile")
@click.option("--backend", "backends", multiple=True, default=("torch", "ort"), show_default=True,
              help=f"{' | '.join(backend_names())}; repeat or comma-separate.")
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False),
              help="A file per backend kind (ONNX for ort, engine for trt) [ort default: export one to a temp dir].")
@click.option("--variant", type=click.Choice(VARIANTS, case_sensitive=False), default=None,
              help="Variant [default: from --model metadata, else s].")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint of the model timed [default: the one --model records, else random weights].")
@click.option("--ema/--no-ema", default=None, help="Use the checkpoint's EMA weights [default: as --model records].")
@img_size_option(default="from --model, else 224")
@click.option("--batch", "batch_text", default="1", show_default=True, help="Batch sizes, comma list, e.g. 1,8,32.")
@click.option("--warmup", type=int, default=5, show_default=True,
              help="Untimed rounds per batch size (a round: one call of each backend, in turn).")
@click.option("--iters", type=int, default=20, show_default=True, help="Timed rounds per batch size.")
@click.option("--duration", type=float, default=None,
              help="Seconds of timed rounds per backend and batch size instead of --iters.")
@click.option("--threads", type=int, default=None, help="torch / ORT intra-op threads [default: all cores].")
@_backend_options
@click.option("--seed", "input_seed", type=int, default=0, show_default=True,
              help="Seed of the random input batches (the weights are the ones --model records).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Latency-vs-batch picture (.png, .svg or .pdf).")
@allow_nonfinite_option
@_one_line_errors
def profile(batch_text, json_path, plot_path, variant, checkpoint, ema, allow_nonfinite, warmup, iters, duration,
            **kwargs):
    """Measure latency and throughput of TinyViM on several backends and batch sizes."""
    inputs = [("--model", m) for m in kwargs["models"]] + [("--checkpoint", checkpoint)]
    check_output_paths({"--json": json_path, "--plot": plot_path}, inputs=inputs,
                       suffixes={"--plot": prof.PLOT_FORMATS})
    if plot_path:
        prof.check_plot_output(plot_path)
    options = _pop_backend_options(kwargs)
    model = ModelOverrides(variant, checkpoint=checkpoint, ema=ema, allow_nonfinite=allow_nonfinite)
    document = prof.run_profile(batches=_int_list(batch_text, "--batch"), model=model,
                                timing=prof.Timing(warmup, iters, duration), options=options, log=_err, **kwargs)
    click.echo(prof.format_environment(document["environment"], [e["backend"] for e in document["results"]]))
    click.echo(prof.format_table(document["results"]))
    click.echo(document["noise"]["verdict"])
    if json_path:
        atomic_write_json(json_path, document)
    if plot_path:
        prof.plot_latency(document["results"], plot_path, title=prof.profile_title(document))


# --------------------------------------------------------------------- build-engine
@click.command("build-engine")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Engine path [default: MODEL.<precision>.engine].")
@click.option("--precision", type=click.Choice(COMPUTE_PRECISIONS), default=FP32, show_default=True)
@click.option("--min-shape", default=None, metavar="BxHxW",
              help="Smallest input of the profile, batch x height x width (e.g. 1x224x224); needed for an ONNX "
                   "with a dynamic image size [default: --opt-shape].")
@click.option("--opt-shape", default=None, metavar="BxHxW", help="Input TensorRT tunes for [default: --max-shape].")
@click.option("--max-shape", default=None, metavar="BxHxW", help="Largest input of the profile [default: --opt-shape].")
@click.option("--min-batch", type=int, default=None, help="Short form for the ONNX's own H x W [default: 1].")
@click.option("--opt-batch", type=int, default=None, help="[default: --max-batch]")
@click.option("--max-batch", type=int, default=None, help="[default: --opt-batch, else --min-batch]")
@click.option("--tf32", is_flag=True, help="Let fp32 layers use TF32 tensor cores (faster, ~1e-3 relative error; "
                                            "off by default so that fp32 is fp32).")
@click.option("--workspace", type=int, default=None, help="Builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Read / update this timing cache (faster rebuilds).")
@click.option("--plugin", type=click.Path(dir_okay=False), default=None,
              help="Scan plugin library [default: the one `tinyvim build-plugin` built].")
@click.option("--builder-optimization-level", type=click.IntRange(0, 5), default=None)
@_one_line_errors
def build_engine(model, output, precision, min_shape, opt_shape, max_shape, min_batch, opt_batch, max_batch, tf32,
                 workspace, timing_cache, plugin, builder_optimization_level):
    """Build a TensorRT engine (and its JSON sidecar) from a TinyViM ONNX MODEL.

    Goes through Polygraphy's TensorRT loaders; prints the equivalent trtexec and polygraphy command lines first."""
    shapes = ProfileRequest(min_shape, opt_shape, max_shape, min_batch, opt_batch, max_batch)
    result = build(model, output, precision=precision, shapes=shapes, tf32=tf32, workspace_mib=workspace,
                   timing_cache=timing_cache, plugin=plugin, builder_optimization_level=builder_optimization_level,
                   log=_err)
    click.echo(f"wrote {result.engine_path} and {result.sidecar_path} ({precision}, built in {result.seconds:.1f} s)")
