"""`tinyvim evaluate [MODEL] --data DIR`: top-1/top-5 on labelled pictures (tinyvim.tools.evaluate
does the work; this module parses and prints)."""
from __future__ import annotations

import click

from tinyvim.backends.registry import backend_names
from tinyvim.commands.backend_options import backend_options, pop_backend_options
from tinyvim.commands.common import ProgressBar, echo_err, img_size_option, json_option, one_line_errors
from tinyvim.contract import VARIANTS
from tinyvim.tools.evaluate import WORST_PICTURES, format_report, evaluate_model
from tinyvim.tools.inputs import DEFAULT_CROP_PCT
from tinyvim.utils import atomic_write_json, check_output_paths


def _top1_progress(bar: ProgressBar):
    """evaluate's progress callback (pictures done, total, seconds, running top-1) on the shared bar."""
    return lambda done, total, seconds, top1: bar(done, total, seconds, f"top-1 {top1 * 100:.2f} %")


@click.command("evaluate")
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--data", type=click.Path(file_okay=False), required=True,
              help="Labelled pictures: ImageNet WNID class folders, class folders (with --class-map or in sorted "
                   "order), or a flat folder with LOC_val_solution.csv or val.txt (`name index`).")
@click.option("--class-map", type=click.Path(dir_okay=False), default=None,
              help="Lines `folder index` naming the head index of each class folder.")
@click.option("--backend", default=None, metavar="NAME",
              help=f"{' | '.join(backend_names())} [default: by MODEL's kind; torch without MODEL].")
@backend_options
@click.option("--variant", type=click.Choice(VARIANTS, case_sensitive=False), default=None,
              help="Variant [default: from MODEL's metadata, else s].")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint of the PyTorch model (without MODEL) or of the reference.")
@click.option("--ema/--no-ema", default=None, help="Use the checkpoint's EMA weights.")
@img_size_option(default="MODEL's, else 224")
@click.option("--batch", type=int, default=None, help="Pictures per inference [default: MODEL's batch, else 8].")
@click.option("--limit", type=int, default=None, help="Evaluate N pictures, spread evenly over the folder.")
@click.option("--workers", type=int, default=2, show_default=True, help="Threads decoding pictures.")
@click.option("--threads", type=int, default=None, help="Intra-op threads [default: all cores].")
@click.option("--crop-pct", type=float, default=DEFAULT_CROP_PCT, show_default=True, help="Centre-crop fraction.")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Also run the PyTorch reference on the same pictures (Δtop-1, agreement).")
@click.option("--worst", type=int, default=WORST_PICTURES, show_default=True,
              help="List this many pictures where the model and the reference disagree most.")
@click.option("--min-top1", type=float, default=None, help="Fail (exit 1) below this top-1, in percent.")
@click.option("--max-drop", type=float, default=None,
              help="Fail (exit 1) when top-1 is more than this many points below the PyTorch reference.")
@click.option("--allow-nonfinite", is_flag=True, help="Load a checkpoint whose weights hold NaN/Inf.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@json_option
@click.pass_context
@one_line_errors
def evaluate(ctx, model, data, json_path, quiet, **kwargs):
    """Top-1/top-5 of MODEL on labelled pictures, beside the PyTorch reference's on the same pictures.

    MODEL: .onnx, .xml or .engine, on any backend that runs it; without MODEL, the PyTorch model
    from --checkpoint (--backend torch or torch-fused).

    Exit status: 0 done (gates held), 1 a --min-top1 / --max-drop gate failed, 2 bad input."""
    check_output_paths({"--json": json_path}, inputs={"MODEL": model, "--checkpoint": kwargs["checkpoint"]})
    options = pop_backend_options(kwargs)
    report = evaluate_model(model, data=data, options=options,
                            progress=None if quiet else _top1_progress(ProgressBar()), log=echo_err, **kwargs)
    click.echo(format_report(report))
    if json_path:
        atomic_write_json(json_path, report)
    ctx.exit(0 if report["passed"] else 1)
