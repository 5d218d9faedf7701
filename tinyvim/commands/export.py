"""`tinyvim export --fmt onnx|openvino|triton`: the re-parameterized model as ONNX, checked and
cleaned (or converted on to OpenVINO IR, or laid out as a Triton model repository)."""
from __future__ import annotations

import click

from tinyvim.commands.common import (
    allow_nonfinite_option,
    announce_weights,
    backbone_option,
    checkpoint_option,
    ema_option,
    img_size_option,
    json_option,
    variant_option,
)
from tinyvim.commands.serve import print_repository, triton_export_options
from tinyvim.contract import (
    DEFAULT_IMG_SIZE,
    DEFAULT_OPSET,
    EXPORT_FORMATS,
    EXPORT_PRECISIONS,
    FP32,
    INPUT_MULTIPLE,
    MAX_BATCH,
    MAX_IMAGE_SIDE,
    ORT_TARGET_PLATFORMS,
    SCAN_FLAVOURS,
    TRITON_FORMAT,
)
from tinyvim.export import check_export_args
from tinyvim.export.formats import check_format_flags, plan_export
from tinyvim.serve.repository import check_format_options, export_repository
from tinyvim.utils import check_name_lengths, check_output_paths


@click.command("export")
@click.option("--fmt", type=click.Choice(list(EXPORT_FORMATS)), default="onnx", show_default=True,
              help="onnx; openvino (IR .xml + .bin, portable scan; needs tinyvim[openvino]); triton (a Triton "
                   "Inference Server model repository folder at -o); pt2 (torch.export .pt2), aoti (AOTInductor "
                   ".pt2, minutes), torchscript, executorch (.pte, needs tinyvim[executorch]): the scan inlined, "
                   "loadable without tinyvim; ort (ONNX Runtime mobile .ort + its operator list). See "
                   "docs/targets.md. TensorRT engines: export ONNX, then `tinyvim build-engine`.")
@variant_option
@checkpoint_option
@ema_option
@backbone_option
@img_size_option()
@click.option("--batch", type=int, default=1, show_default=True, help=f"Static batch size (1..{MAX_BATCH}).")
@click.option("--dynamic-batch", is_flag=True, help=f"Make the batch dimension dynamic (1..{MAX_BATCH}).")
@click.option("--dynamic-size", is_flag=True,
              help=f"Make H and W dynamic: any multiples of {INPUT_MULTIPLE} up to {MAX_IMAGE_SIDE} from one file "
                   "(--img-size is then unused).")
@click.option("--scan", type=click.Choice(SCAN_FLAVOURS), default="portable", show_default=True,
              help="portable: standard ONNX ops only; plugin: one CrossSelectiveScan node per SS2D (TensorRT plugin).")
@click.option("--opset", type=int, default=None,
              help=f"ONNX opset (default {DEFAULT_OPSET}; up to what the installed onnx supports).")
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default=FP32, show_default=True,
              help="fp16 keeps the scan state, softplus and LayerNorm in fp32; I/O stays fp32.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights (no checkpoint).")
@click.option("--compress-to-fp16", is_flag=True,
              help="--fmt openvino: store the IR's weights in fp16 (default: fp32, as exported).")
@click.option("--target-platform", type=click.Choice(ORT_TARGET_PLATFORMS), default=None,
              help="--fmt ort: optimize the .ort for arm (phones; runs on any CPU) or amd64 (x86 layout "
                   "transforms) [default: arm].")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Output path (default: tinyvim-<variant>-<size>-<scan>.onnx, .xml for openvino; "
                   "--fmt triton: model_repository).")
@allow_nonfinite_option
@json_option
@triton_export_options
def export(fmt, variant, checkpoint, ema, backbone, img_size, batch, dynamic_batch, dynamic_size, scan, opset,
           precision, seed, compress_to_fp16, target_platform, output, allow_nonfinite, json_path, **triton):
    """Export TinyViM (always re-parameterized) to ONNX, OpenVINO IR, a Triton model repository, or a
    PyTorch 2 / mobile format (pt2, aoti, torchscript, executorch, ort)."""
    check_format_flags(fmt, compress_to_fp16=compress_to_fp16, target_platform=target_platform)
    img_size = img_size or DEFAULT_IMG_SIZE
    plan = None
    if fmt != TRITON_FORMAT:   # every argument and each file the format writes, before anything else
        plan = plan_export(fmt, output, json_path=json_path, compress_to_fp16=compress_to_fp16,
                           target_platform=target_platform, variant=variant,
                           checkpoint=checkpoint, ema=ema, backbone=backbone, img_size=img_size, batch=batch,
                           dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, scan=scan, opset=opset,
                           precision=precision, seed=seed, allow_nonfinite=allow_nonfinite)
    elif output:          # the repository folder: a name the filesystem cannot hold, before any stat of it
        check_name_lengths(output, "-o")
    check_format_options(fmt, output, triton)
    # every argument and output path before the model is built or traced
    check_export_args(scan=scan, precision=precision, img_size=img_size, batch=batch, opset=opset, seed=seed)
    if fmt == TRITON_FORMAT:   # -o is a folder here: the repository writer checks and renames it into place
        check_output_paths({"--json": json_path}, inputs={"--checkpoint": checkpoint})
        announce_weights(checkpoint, seed)
        result = export_repository(output, triton, dict(
            variant=variant, checkpoint=checkpoint, ema=ema, backbone=backbone, img_size=img_size, batch=batch,
            dynamic_batch=dynamic_batch, scan=scan, dynamic_size=dynamic_size, opset=opset, precision=precision,
            seed=seed, allow_nonfinite=allow_nonfinite), log=lambda m: click.echo(f"  {m} ...", err=True))
        return print_repository(result, json_path)
    announce_weights(checkpoint, seed)
    result = plan.run(log=lambda m: click.echo(f"  {m} ...", err=True))      # writes --json too
    ops = result.op_counts
    top = ", ".join(f"{k} {v}" for k, v in list(ops.items())[:10])
    more = f", … {len(ops) - 10} more types" if len(ops) > 10 else ""
    click.echo(f"exported {result.path}  ({result.size_bytes / 2**20:.1f} MiB, {result.num_nodes} nodes, "
               f"{result.seconds:.1f} s)")
    meta = result.metadata
    hw = "H, W (multiples of 32)" if meta.dynamic_size else f"{img_size[0]}, {img_size[1]}"
    click.echo(f"  inputs  images (batch {'dynamic' if meta.dynamic_batch else meta.batch}, 3, {hw}) float32")
    click.echo(f"  outputs {', '.join(result.output_names)}")
    onnx_based = fmt in ("onnx", "openvino", "ort")     # the others inline the scan and have no opset
    click.echo(f"  scan    {scan if onnx_based else 'inlined (standard ops)'}; precision {precision}"
               + (f"; opset {meta.opset}" if onnx_based else ""))
    click.echo(f"  nodes   {top}{more}")
    if len(plan.files) > 1:
        click.echo(f"  files   {', '.join(str(f) for f in plan.files)}")
    if meta.weights != meta.precision:
        click.echo(f"  weights stored in {meta.weights} (validated at the {meta.weights} tolerance)")
