"""Triton Inference Server: `export --fmt triton` (its options and summary), `serve` and
`serve-bench`. Parse, call tinyvim.serve, print."""
from __future__ import annotations

import click

from tinyvim.commands.common import echo_err as _err
from tinyvim.commands.common import int_list as _int_list
from tinyvim.commands.common import one_line_errors as _one_line_errors
from tinyvim.contract import TRITON_FORMAT, TRITON_MODEL_NAME, TRITON_PORTS
from tinyvim.errors import TinyvimError
from tinyvim.serve.load import bench_repository, format_load_table, run_serve_bench
from tinyvim.serve.server import (
    TritonServer,
    check_start_timeout,
    find_triton,
    serve_until_stopped,
)
from tinyvim.serve.settings import TRITON_OPTIONS, TritonOption, TritonSettings
from tinyvim.tools import profile as prof
from tinyvim.utils import atomic_write_json, check_output_paths

_D = TritonSettings()   # the library's defaults, shown in the help


# --------------------------------------------------------------------- export --fmt triton
def _click_option(option: TritonOption):
    """A click option for one of tinyvim.serve.settings.TRITON_OPTIONS. Its default is None, so
    that using it without --fmt triton is caught; 'N,N' lists are parsed here."""
    if option.choices:
        kind = click.Choice(option.choices)
    elif option.kind == "file":
        kind = click.Path(dir_okay=False)
    elif option.kind is int:
        kind = int
    else:
        kind = str
    callback = None
    if option.kind == "int_list":
        def callback(ctx, param, value, flag=option.flag):
            return None if value is None else tuple(_int_list(value, flag))
    default = option.default if option.default is not None else getattr(_D, option.field)
    scope = f"--fmt {TRITON_FORMAT}" + (f", {option.only}" if option.only else "")
    return click.option(option.flag, option.param, type=kind, default=None, callback=callback,
                        metavar="N,N" if option.kind == "int_list" else None,
                        help=f"[{scope}] {option.help} [default: {default}].")


def triton_export_options(fn):
    """The options of `export --fmt triton`, added to the export command."""
    for option in reversed(TRITON_OPTIONS):
        fn = _click_option(option)(fn)
    return fn


def print_repository(result, json_path: str | None) -> None:
    """What `export --fmt triton` wrote, and what a user needs to serve it."""
    s, sig = result.settings, result.signature
    click.echo(f"wrote Triton model repository {result.repo}")
    click.echo(f"  model    {s.model_name} ({s.backend} backend, version {s.version}): "
               f"{', '.join(str(f.relative_to(result.model_dir)) for f in result.files)}")
    for kind, specs in (("inputs", sig.inputs), ("outputs", sig.outputs)):
        click.echo(f"  {kind:<8} " + "; ".join(f"{t.name} {list(t.dims)} {t.data_type}" for t in specs))
    batching = (f"max_batch_size {s.max_batch_size}, preferred {list(s.preferred_batch_sizes) or 'none'}, "
                f"max queue delay {s.max_queue_delay_us} us" if s.max_batch_size else "off (max_batch_size 0)")
    click.echo(f"  batching {batching}; {s.instances} {s.kind.upper()} instance(s)")
    for note in result.notes:
        click.echo(f"  note     {note}")
    click.echo(f"  serve    tinyvim serve {result.repo}")
    if json_path:
        atomic_write_json(json_path, result.to_json())


# --------------------------------------------------------------------- serve
def _port(name: str):
    return click.option(f"--{name}-port", f"{name}_port", type=click.IntRange(0, 65535), default=TRITON_PORTS[name],
                        show_default=True, help=f"{name} port (0: a free one).")


@click.command("serve")
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the endpoints listen on (0.0.0.0 exposes the server to your network; ::1 for IPv6).")
@_port("http")
@_port("grpc")
@_port("metrics")
@click.option("--tritonserver", "server_path", type=click.Path(dir_okay=False), default=None,
              help="tritonserver binary of a Triton install [default: the nvidia-pytriton wheel's].")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None, help="Write the server's log here.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait until it is ready.")
@click.option("--server-arg", "server_args", multiple=True, metavar="ARG",
              help="Pass ARG on to tritonserver (repeatable), e.g. --server-arg=--log-verbose=1.")
@_one_line_errors
def serve(repo, host, http_port, grpc_port, metrics_port, server_path, log_file, timeout, server_args):
    """Serve a model REPO (from `export --fmt triton`) with Triton Inference Server until Ctrl-C.

    Needs the `serve` extra: pip install 'tinyvim[serve]' && pip install --no-deps nvidia-pytriton==0.7.0"""
    check_start_timeout(timeout)
    server = TritonServer(repo, host=host, log_path=log_file, extra_args=server_args,
                          ports={"http": http_port, "grpc": grpc_port, "metrics": metrics_port})
    server.install = find_triton(server_path)
    _err(f"starting tritonserver ({server.install.origin}) on {repo}...")

    def ready(srv):
        click.echo(f"serving {srv.repo.resolve()} with tritonserver PID {srv.pid}")
        click.echo(f"  HTTP     http://{srv.http_url}")
        click.echo(f"  gRPC     {srv.grpc_url}")
        click.echo(f"  metrics  {srv.metrics_url}")
        for m in srv.models():
            click.echo(f"  model    {m['name']} version {m.get('version', '?')} {m.get('state', '?')}: "
                       f"POST http://{srv.http_url}/v2/models/{m['name']}/infer")
        if srv.exposed:
            click.secho(f"note: listening on {host}, not only loopback: anyone who reaches this machine can "
                        "send requests", fg="yellow", err=True)
        click.echo("Ctrl-C stops the server")

    code = serve_until_stopped(server, timeout, on_ready=ready)
    click.echo(f"stopped tritonserver (PID {server.pid}, exit code {code})")


# --------------------------------------------------------------------- serve-bench
@click.command("serve-bench")
@click.option("--url", "http_url", default=f"127.0.0.1:{TRITON_PORTS['http']}", show_default=True,
              help="HTTP endpoint, host:port or http://host:port (model metadata and statistics come from it).")
@click.option("--grpc-url", default=f"127.0.0.1:{TRITON_PORTS['grpc']}", show_default=True,
              help="gRPC endpoint host:port (for --protocol grpc).")
@click.option("--repo", type=click.Path(file_okay=False), default=None,
              help="Start a server on this repository (loopback, free ports) for the run, and stop it after.")
@click.option("--model", "model_name", default=TRITON_MODEL_NAME, show_default=True)
@click.option("--protocol", "protocol_text", default="http", show_default=True, help="http, grpc, or both: http,grpc.")
@click.option("--concurrency", "concurrency_text", default="1,4,8", show_default=True,
              help="Concurrent clients, comma list (each waits for its answer before the next request).")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds measured per concurrency.")
@click.option("--warmup", type=float, default=2.0, show_default=True,
              help="Seconds of unmeasured requests before each measured window.")
@click.option("--batch", type=int, default=1, show_default=True, help="Images per request.")
@click.option("--slices", type=int, default=1, show_default=True,
              help="Measure each --duration in N windows, server and in-process in turn (evens out load drift).")
@click.option("--compare-onnx", type=click.Path(dir_okay=False), default=None,
              help="Run this ONNX in-process (ONNX Runtime) under the same load, for the server / in-process ratio.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads for --compare-onnx [default: all cores].")
@click.option("--tritonserver", "server_path", type=click.Path(dir_okay=False), default=None,
              help="With --repo: tritonserver binary [default: the nvidia-pytriton wheel's].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Latency-vs-concurrency PNG.")
@_one_line_errors
def serve_bench(http_url, grpc_url, repo, model_name, protocol_text, concurrency_text, duration, warmup, batch,
                slices, compare_onnx, threads, server_path, seed, json_path, plot_path):
    """Load-test a model served by Triton: latency percentiles and images/s per concurrency,
    failed requests, and the server's own batch statistics."""
    protocols = [p.strip().lower() for p in protocol_text.split(",") if p.strip()]
    concurrencies = _int_list(concurrency_text, "--concurrency")
    check_output_paths({"--json": json_path, "--plot": plot_path}, inputs={"--compare-onnx": compare_onnx})
    if plot_path:
        prof.check_plot_output(plot_path)
    settings = dict(protocols=protocols, concurrencies=concurrencies, duration_s=duration, warmup_s=warmup,
                    batch=batch, slices=slices, compare_onnx=compare_onnx, threads=threads, seed=seed, log=_err)
    if repo:
        document = bench_repository(repo, model_name, server_path=server_path, **settings)
    else:
        document = run_serve_bench(http_url, model_name, grpc_url=grpc_url, **settings)
    click.echo(prof.format_environment(document["environment"], []))
    click.echo(format_load_table(document["results"]))
    for backend, ratios in document["throughput_ratio_vs_inprocess"].items():
        if ratios:
            click.echo(f"{backend} / ort-inprocess throughput: "
                       + ", ".join(f"{r:.2f}x at concurrency {c}" for c, r in ratios.items()))
    if json_path:
        atomic_write_json(json_path, document)
    if plot_path:
        shape = document["input"]["shape"]
        prof.plot_latency([e for e in document["results"] if "latency_ms" in e], plot_path,
                          title=f"{model_name} {'x'.join(map(str, shape[-2:]))}, batch {batch} per request",
                          x="concurrency", xlabel="concurrent requests", stat="p50")
    failed = sum(e["failed"] for e in document["results"])
    if failed:
        errors = sorted({msg for e in document["results"] for msg in e["errors"]})
        raise TinyvimError(f"{failed} request(s) failed: {'; '.join(errors[:3])}", exit_code=1)
