"""`tinyvim build-plugin`: CMake configure + build of the scan's native libraries."""
from __future__ import annotations

import re

import click

from tinyvim.commands.common import one_line_errors
from tinyvim.plugins.build import prepare_build, run_build


@click.command("build-plugin")
@click.option("--build-dir", type=click.Path(file_okay=False), default=None,
              help="Build folder [default: $TINYVIM_PLUGIN_BUILD_DIR or ~/.cache/tinyvim/plugins/build].")
@click.option("--tensorrt-root", type=click.Path(file_okay=False), default=None,
              help="TensorRT prefix holding include/NvInfer.h [default: $TENSORRT_ROOT, CPATH, system paths].")
@click.option("--cuda-arch", default=None, metavar="ARCHS",
              help="CUDA architectures in CMake syntax, e.g. 90 or '80;90' "
                   "[default: fat binary sm_75..sm_120 + PTX].")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help="Parallel compile jobs [default: CPU count].")
@click.option("--cpu-only", is_flag=True, help="Build only the CPU twin and the host-logic tests (no nvcc needed).")
@click.option("--verbose", is_flag=True, help="Show the full CMake/compiler output.")
@one_line_errors     # one `error:` line and the PluginError's exit code, also outside the tinyvim group
def build_plugin(build_dir, tensorrt_root, cuda_arch, jobs, cpu_only, verbose):
    """Build the CUDA scan kernel, its CPU twin and the TensorRT plugin with CMake.

    The plugin needs TensorRT's headers; the summary lists what was built and what was skipped."""
    # tools, --tensorrt-root and the build folder are checked before anything is said or run
    plan = prepare_build(build_dir, tensorrt_root=tensorrt_root, cuda_arch=cuda_arch, jobs=jobs, cpu_only=cpu_only)
    percent = re.compile(r"^\[\s*(\d+)%\]\s+(.*)$")

    def progress(line: str) -> None:
        if verbose:
            click.echo(line, err=True)
            return
        m = percent.match(line)
        if m and ("Building" in m.group(2) or "Linking" in m.group(2)):
            click.echo(f"  [{m.group(1):>3}%] {m.group(2)}", err=True)
        elif line.startswith("-- tinyvim:"):
            click.echo("  " + line[3:], err=True)

    click.echo(f"building tinyvim plugins in {plan.build_dir}", err=True)
    result = run_build(plan, progress=progress)
    for target, path in sorted(result.built.items()):
        click.echo(f"built    {target:<26} {path}")
    for target, reason in sorted(result.skipped.items()):
        click.echo(f"skipped  {target:<26} {reason}")
    click.echo(f"log: {result.log}", err=True)
