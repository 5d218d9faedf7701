"""`tinyvim benchmark`: one table of every format x precision x backend (tinyvim.tools.benchmark does
the work; this module parses and prints)."""
from __future__ import annotations

import click

from tinyvim.commands.common import (
    checkpoint_option,
    echo_err,
    img_size_option,
    int_list,
    one_line_errors,
    variant_option,
)
from tinyvim.errors import TinyvimError
from tinyvim.tools.benchmark import (
    DEFAULT_LIMIT,
    all_rows,
    format_markdown,
    output_paths,
    row_key,
    run_benchmark,
    write_outputs,
)


def _files(values) -> dict[str, str]:
    out = {}
    for v in values:
        artifact, sep, path = v.partition("=")
        if not sep or not path:
            raise TinyvimError(f"--file {v!r}: give ARTIFACT=PATH, e.g. onnx=model.onnx")
        out[artifact.strip()] = path
    return out


@click.command("benchmark")
@variant_option
@checkpoint_option
@img_size_option()
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Labelled pictures (the layouts of `tinyvim evaluate`): adds top-1 and Δ vs PyTorch.")
@click.option("--limit", type=int, default=DEFAULT_LIMIT, show_default=True, help="Labelled pictures used at most.")
@click.option("--calib", type=click.Path(file_okay=False), default=None,
              help="Flat folder of pictures calibrating the int8/fp8 rows [default: --data if flat, else random].")
@click.option("--formats", default=None,
              help=f"Rows to run, comma list [default: all]: {', '.join(row_key(r.label) for _, r in all_rows())}, "
                   "or backend names.")
@click.option("--batch", "batch_text", default="1,8", show_default=True,
              help="Batch sizes: p50 latency at the smallest, throughput at the largest.")
@click.option("--iters", type=int, default=20, show_default=True, help="Interleaved timing repeats per batch size.")
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads for every row [default: all cores].")
@click.option("--workers", type=int, default=2, show_default=True, help="Threads decoding the --data pictures.")
@click.option("--file", "files", multiple=True, metavar="ARTIFACT=PATH",
              help="Use a file already made instead of making it, e.g. onnx=model.onnx (a dynamic-batch export of "
                   "the same variant/checkpoint) or onnx-int8=model.int8.onnx; repeatable.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the exported / quantized files here [default: a temporary folder].")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Write benchmark.md, .csv, .json and .png (latency vs top-1) here.")
@click.option("--no-plot", is_flag=True, help="With --out-dir: skip the picture (no matplotlib needed).")
@one_line_errors
def benchmark(variant, checkpoint, img_size, data, limit, calib, formats, batch_text, iters, warmup, threads, workers,
              files, workdir, out_dir, no_plot):
    """One table of every format x precision x backend that runs here: size, time to make, top-1 and
    Δ vs PyTorch, agreement, p50 latency, throughput, speed-up over eager PyTorch."""
    if out_dir:
        output_paths(out_dir, plot=not no_plot)      # said before minutes of work, not after
    report = run_benchmark(variant=variant, checkpoint=checkpoint, img_size=img_size or (224, 224), data=data,
                           limit=limit, calib=calib, formats=formats, batches=tuple(int_list(batch_text, "--batch")),
                           iters=iters, warmup=warmup, threads=threads, workers=workers, workdir=workdir,
                           files=_files(files),
                           log=lambda m: echo_err(f"  {m} ..."))
    click.echo(format_markdown(report))
    if out_dir:
        for path in write_outputs(report, out_dir, plot=not no_plot):
            echo_err(f"wrote {path}")
