"""`tinyvim export --fmt onnx`: the re-parameterized model as ONNX, checked and cleaned."""
from __future__ import annotations

import click

from tinyvim.commands.common import (allow_nonfinite_option, announce_weights, backbone_option, checkpoint_option,
                                     ema_option, img_size_option, json_option, variant_option)
from tinyvim.contract import DEFAULT_OPSET, EXPORT_PRECISIONS, MAX_BATCH, SCAN_FLAVOURS, format_size
from tinyvim.utils import atomic_write_json, check_output_paths


def default_output(variant: str, img_size, scan: str, precision: str, backbone: bool) -> str:
    parts = [f"tinyvim-{variant}", "backbone" if backbone else "",
             format_size(img_size) if img_size[0] != img_size[1] else str(img_size[0]), scan,
             precision if precision != "fp32" else ""]
    return "-".join(p for p in parts if p) + ".onnx"


@click.command("export")
@click.option("--fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="Output format (TensorRT engines: export ONNX, then `tinyvim build-engine`).")
@variant_option
@checkpoint_option
@ema_option
@backbone_option
@img_size_option()
@click.option("--batch", type=int, default=1, show_default=True, help=f"Static batch size (1..{MAX_BATCH}).")
@click.option("--dynamic-batch", is_flag=True, help=f"Make the batch dimension dynamic (1..{MAX_BATCH}).")
@click.option("--scan", type=click.Choice(SCAN_FLAVOURS), default="portable", show_default=True,
              help="portable: standard ONNX ops only; plugin: one CrossSelectiveScan node per SS2D (TensorRT plugin).")
@click.option("--opset", type=int, default=None,
              help=f"ONNX opset (default {DEFAULT_OPSET}; up to what the installed onnx supports).")
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default="fp32", show_default=True,
              help="fp16 keeps the scan state, softplus and LayerNorm in fp32; I/O stays fp32.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights (no checkpoint).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output path (default: tinyvim-<variant>-<size>-<scan>.onnx).")
@allow_nonfinite_option
@json_option
def export(fmt, variant, checkpoint, ema, backbone, img_size, batch, dynamic_batch, scan, opset, precision, seed,
           output, allow_nonfinite, json_path):
    """Export TinyViM (always re-parameterized) to ONNX."""
    from tinyvim.export import check_export_args, export_onnx
    img_size = img_size or (224, 224)
    output = output or default_output(variant, img_size, scan, precision, backbone)
    # every argument and output path before the model is built or traced
    check_export_args(scan=scan, precision=precision, img_size=img_size, batch=batch, opset=opset, seed=seed)
    check_output_paths({"-o": output, "--json": json_path}, inputs={"--checkpoint": checkpoint})
    announce_weights(checkpoint, seed)
    result = export_onnx(output, variant=variant, checkpoint=checkpoint, ema=ema, backbone=backbone,
                         img_size=img_size, batch=batch, dynamic_batch=dynamic_batch, scan=scan, opset=opset,
                         precision=precision, seed=seed, allow_nonfinite=allow_nonfinite,
                         log=lambda m: click.echo(f"  {m} ...", err=True))
    ops = result.op_counts
    top = ", ".join(f"{k} {v}" for k, v in list(ops.items())[:10])
    more = f", … {len(ops) - 10} more types" if len(ops) > 10 else ""
    click.echo(f"exported {result.path}  ({result.size_bytes / 2**20:.1f} MiB, {result.num_nodes} nodes, "
               f"{result.seconds:.1f} s)")
    meta = result.metadata
    click.echo(f"  inputs  images (batch {'dynamic' if meta.dynamic_batch else meta.batch}, 3, {img_size[0]}, "
               f"{img_size[1]}) float32")
    click.echo(f"  outputs {', '.join(result.output_names)}")
    click.echo(f"  scan    {scan}; precision {precision}; opset {meta.opset}")
    click.echo(f"  nodes   {top}{more}")
    if json_path:
        atomic_write_json(json_path, {
            "path": str(result.path), "size_bytes": result.size_bytes, "num_nodes": result.num_nodes,
            "op_counts": ops, "seconds": result.seconds, "metadata": meta.to_props()})
