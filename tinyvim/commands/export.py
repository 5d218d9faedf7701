"""`tinyvim export --fmt onnx|openvino|triton`: the re-parameterized model as ONNX, checked and
cleaned (or converted on to OpenVINO IR, or laid out as a Triton model repository)."""
from __future__ import annotations

import click

from tinyvim.commands.common import announce_weights, input_options, json_option, model_options
from tinyvim.commands.serve import print_repository, triton_export_options
from tinyvim.contract import (
    DEFAULT_OPSET,
    EXPORT_FORMATS,
    EXPORT_PRECISIONS,
    FP32,
    PORTABLE_SCAN,
    SCAN_FLAVOURS,
    TRITON_FORMAT,
)
from tinyvim.export import check_export_args
from tinyvim.export.formats import check_format_flags, plan_export
from tinyvim.serve.repository import check_format_options, export_repository
from tinyvim.utils import check_name_lengths, check_output_paths


@click.command("export")
@click.option("--fmt", type=click.Choice(list(EXPORT_FORMATS)), default="onnx", show_default=True,
              help="onnx; openvino (IR .xml + .bin, portable scan; needs tinyvim[openvino]); or triton (a Triton "
                   "Inference Server model repository folder at -o). TensorRT engines: export ONNX, then "
                   "`tinyvim build-engine`.")
@model_options()
@input_options()
@click.option("--scan", type=click.Choice(SCAN_FLAVOURS), default=PORTABLE_SCAN, show_default=True,
              help="portable: standard ONNX ops only; plugin: one CrossSelectiveScan node per SS2D (TensorRT plugin).")
@click.option("--opset", type=int, default=None,
              help=f"ONNX opset (default {DEFAULT_OPSET}; up to what the installed onnx supports).")
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default=FP32, show_default=True,
              help="fp16 keeps the scan state, softplus and LayerNorm in fp32; I/O stays fp32.")
@click.option("--compress-to-fp16", is_flag=True,
              help="--fmt openvino: store the IR's weights in fp16 (default: fp32, as exported).")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Output path (default: tinyvim-<variant>-<size>-<scan>.onnx, .xml for openvino; "
                   "--fmt triton: model_repository).")
@json_option
@triton_export_options
def export(fmt, model, inputs, scan, opset, precision, compress_to_fp16, output, json_path, **triton):
    """Export TinyViM (always re-parameterized) to ONNX, OpenVINO IR or a Triton model repository."""
    check_format_flags(fmt, compress_to_fp16=compress_to_fp16)
    if fmt == TRITON_FORMAT:   # -o is a folder here: the repository writer checks and renames it into place
        if output:          # the repository folder: a name the filesystem cannot hold, before any stat of it
            check_name_lengths(output, "-o")
        check_format_options(fmt, output, triton)
        check_export_args(scan=scan, precision=precision, opset=opset)
        check_output_paths({"--json": json_path}, inputs={"--checkpoint": model.checkpoint})
        announce_weights(model)
        result = export_repository(output, triton, dict(model=model, inputs=inputs, scan=scan, opset=opset,
                                                        precision=precision),
                                   log=lambda m: click.echo(f"  {m} ...", err=True))
        return print_repository(result, json_path)
    # every argument and each file the format writes, before the model is built or traced
    plan = plan_export(fmt, output, model, inputs, scan=scan, precision=precision, opset=opset, json_path=json_path,
                       compress_to_fp16=compress_to_fp16)
    check_format_options(fmt, output, triton)
    announce_weights(model)
    result = plan.run(log=lambda m: click.echo(f"  {m} ...", err=True))      # writes --json too
    ops = result.op_counts
    top = ", ".join(f"{k} {v}" for k, v in list(ops.items())[:10])
    more = f", … {len(ops) - 10} more types" if len(ops) > 10 else ""
    click.echo(f"exported {result.path}  ({result.size_bytes / 2**20:.1f} MiB, {result.num_nodes} nodes, "
               f"{result.seconds:.1f} s)")
    meta = result.metadata
    hw = "H, W (multiples of 32)" if meta.dynamic_size else ", ".join(map(str, meta.input_size))
    click.echo(f"  inputs  images (batch {'dynamic' if meta.dynamic_batch else meta.batch}, 3, {hw}) float32")
    click.echo(f"  outputs {', '.join(result.output_names)}")
    click.echo(f"  scan    {meta.scan}; precision {meta.precision}; opset {meta.opset}")
    click.echo(f"  nodes   {top}{more}")
    if len(plan.files) > 1:
        click.echo(f"  files   {', '.join(str(f) for f in plan.files)}")
    if meta.weights != meta.precision:
        click.echo(f"  weights stored in {meta.weights} (validated at the {meta.weights} tolerance)")
