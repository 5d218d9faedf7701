"""`tinyvim info`: parameters, MACs and the SS2D blocks of a variant."""
from __future__ import annotations

import click

from tinyvim.commands.common import announce_weights, img_size_option, json_option, model_options
from tinyvim.contract import DEFAULT_IMG_SIZE, format_size
from tinyvim.tools.model_info import model_report
from tinyvim.utils import atomic_write_json, check_output_paths


def format_table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    sep = "  ".join("-" * widths[c] for c in columns)
    body = ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, sep, *body])


@click.command("info")
@model_options(ema=False)
@img_size_option()
@json_option
def info(model, img_size, json_path):
    """Parameters, GMACs and the SS2D blocks of a TinyViM variant."""
    check_output_paths({"--json": json_path}, inputs={"--checkpoint": model.checkpoint})
    img_size = img_size or DEFAULT_IMG_SIZE
    announce_weights(model)
    variant, backbone, checkpoint = model.variant, model.backbone, model.checkpoint
    # from the shipped table or the cache when known (no torch: fast), else computed
    figures, _ = model_report(model, img_size)
    report = {"variant": variant, "backbone": backbone, "img_size": list(img_size), "checkpoint": checkpoint,
              **figures}
    total, dist = report["params"], report["params"] - report["params_without_dist_head"]
    click.echo(f"TinyViM-{variant.upper()}{' backbone' if backbone else ''} @ {format_size(img_size)}"
               f"{'' if checkpoint else ' (random weights)'}")
    if dist:
        click.echo(f"  parameters      {total / 1e6:.2f} M with dist_head ({total:,}), "
                   f"{(total - dist) / 1e6:.2f} M without ({total - dist:,})")
    else:
        click.echo(f"  parameters      {total / 1e6:.2f} M ({total:,})")
    click.echo(f"  fused params    {report['params_fused'] / 1e6:.2f} M")
    click.echo(f"  GMACs           {report['gmacs']:.3f} (fused {report['gmacs_fused']:.3f}; convs, linears and the scan)")
    click.echo("  SS2D blocks:")
    cols = ["block", "stage", "d_model", "d_inner", "pool", "scan_grid", "scan_length", "d_state", "dt_rank"]
    click.echo("\n".join("    " + line for line in format_table(report["ss2d"], cols).splitlines()))
    if json_path:
        atomic_write_json(json_path, report)
        click.echo(f"  report written to {json_path}")
