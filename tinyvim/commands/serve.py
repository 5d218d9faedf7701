"""Triton Inference Server: `export --fmt triton` (its options and summary), `serve` and
`serve-bench`. Parse, call tinyvim.serve, print."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from tinyvim.commands.common import echo_err as _err, int_list as _int_list, one_line_errors as _one_line_errors
from tinyvim.utils import atomic_write_json, check_output_paths
from tinyvim.contract import TRITON_BACKENDS, TRITON_MODEL_NAME, TRITON_PORTS, TRITON_PYTHON_RUNTIMES
from tinyvim.errors import TinyvimError
from tinyvim.serve.repository import TritonSettings

DEFAULT_REPO = "model_repository"
_D = TritonSettings()   # the library's defaults, shown in the help

# --------------------------------------------------------------------- export --fmt triton
#: (option name, click decorator); defaults are None so that using one without --fmt triton is caught
_TRITON_OPTIONS = [
    click.option("--triton-backend", type=click.Choice(TRITON_BACKENDS), default=None,
                 help="[--fmt triton] Backend the repository is for: python (ONNX Runtime/OpenVINO inside Triton's "
                      "Python backend: runs with the `serve` extra's server), onnxruntime, tensorrt "
                      f"[default: {_D.backend}]."),
    click.option("--model-name", default=None, help=f"[--fmt triton] Model name [default: {_D.model_name}]."),
    click.option("--max-batch-size", type=int, default=None,
                 help="[--fmt triton] Largest batch Triton forms (0: no batching, the ONNX's fixed --batch) "
                      f"[default: {_D.max_batch_size}]."),
    click.option("--preferred-batch-sizes", default=None, metavar="N,N",
                 help="[--fmt triton] Dynamic batcher's preferred batch sizes [default: none]."),
    click.option("--max-queue-delay-us", type=int, default=None,
                 help="[--fmt triton] How long a request may wait for others to batch with "
                      f"[default: {_D.max_queue_delay_us}]."),
    click.option("--instances", type=int, default=None,
                 help=f"[--fmt triton] Model instances [default: {_D.instances}]."),
    click.option("--instance-kind", type=click.Choice(["cpu", "gpu"]), default=None,
                 help="[--fmt triton] Where instances run [default: gpu for tensorrt, else cpu]."),
    click.option("--intra-op-threads", type=int, default=None,
                 help="[--fmt triton] Threads per instance (onnxruntime, python) [default: the runtime's]."),
    click.option("--ort-accelerator", type=click.Choice(["none", "openvino", "tensorrt"]), default=None,
                 help="[--fmt triton, onnxruntime] Execution accelerator: openvino (CPU) or tensorrt (GPU)."),
    click.option("--python-runtime", type=click.Choice(TRITON_PYTHON_RUNTIMES), default=None,
                 help=f"[--fmt triton, python] What model.py runs the ONNX with [default: {_D.python_runtime}]."),
    click.option("--engine", type=click.Path(dir_okay=False), default=None,
                 help="[--fmt triton, tensorrt] A plan from `tinyvim build-engine` [default: build one]."),
]
TRITON_OPTION_NAMES = ("triton_backend", "model_name", "max_batch_size", "preferred_batch_sizes",
                       "max_queue_delay_us", "instances", "instance_kind", "intra_op_threads", "ort_accelerator",
                       "python_runtime", "engine")


def triton_export_options(fn):
    """The options of `export --fmt triton`, added to the export command."""
    for decorator in reversed(_TRITON_OPTIONS):
        fn = decorator(fn)
    return fn


def check_format_options(fmt: str, output: str | None, triton: dict) -> None:
    """The Triton options only with --fmt triton; -o a file for onnx (a folder for triton)."""
    given = [f"--{k.replace('_', '-')}" for k in TRITON_OPTION_NAMES if triton.get(k) is not None]
    if fmt != "triton" and given:
        raise TinyvimError(f"{', '.join(given)} apply to --fmt triton only")
    if fmt == "onnx" and output and Path(output).is_dir():
        raise TinyvimError(f"-o {output} is a folder: --fmt onnx writes one file "
                           f"(e.g. -o {Path(output) / 'model.onnx'}); "
                           "a Triton model repository is --fmt triton")
    if fmt == "triton" and output and Path(output).exists() and not Path(output).is_dir():
        raise TinyvimError(f"-o {output} is a file: --fmt triton writes a model repository folder")


def triton_settings(options: dict):
    """TritonSettings from the CLI options (unset ones keep the library defaults)."""
    values = {"backend": options.get("triton_backend"), "model_name": options.get("model_name"),
              "max_batch_size": options.get("max_batch_size"), "max_queue_delay_us": options.get("max_queue_delay_us"),
              "instances": options.get("instances"), "instance_kind": options.get("instance_kind"),
              "threads": options.get("intra_op_threads"), "accelerator": options.get("ort_accelerator"),
              "python_runtime": options.get("python_runtime")}
    if options.get("preferred_batch_sizes"):
        values["preferred_batch_sizes"] = tuple(_int_list(options["preferred_batch_sizes"], "--preferred-batch-sizes"))
    return TritonSettings(**{k: v for k, v in values.items() if v is not None}).check()


def export_triton(*, output, json_path, batch, dynamic_batch, triton: dict, export_kwargs: dict) -> None:
    """`export --fmt triton`: write the repository and print what a user needs to serve it."""
    from tinyvim.serve.repository import write_repository

    settings = triton_settings(triton)
    if settings.max_batch_size:
        if batch != 1:
            raise TinyvimError(f"--batch {batch}: with --fmt triton the batch is dynamic up to --max-batch-size "
                               f"({settings.max_batch_size}), Triton batches requests; for a fixed batch give "
                               "--max-batch-size 0")
        export_kwargs = {**export_kwargs, "batch": 1, "dynamic_batch": True}
    else:
        export_kwargs = {**export_kwargs, "batch": batch, "dynamic_batch": dynamic_batch}
    repo = output or DEFAULT_REPO
    engine = triton.get("engine")
    if engine:
        _err("  the plan's own metadata describes the model (--engine): the other export options do not apply")
    build = {"precision": export_kwargs["precision"]} if settings.backend == "tensorrt" and not engine else None
    result = write_repository(repo, settings, engine=engine, export=None if engine else export_kwargs, build=build,
                              log=lambda m: click.echo(f"  {m} ...", err=True))
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
        atomic_write_json(json_path, {
            "repository": str(result.repo), "model_dir": str(result.model_dir),
            "files": [str(f) for f in result.files], "config": result.config_path.read_text(),
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()},
            "metadata": sig.metadata.to_props() if sig.metadata else None, "notes": result.notes})


# --------------------------------------------------------------------- serve
def _port(name: str):
    return click.option(f"--{name}-port", f"{name}_port", type=click.IntRange(0, 65535), default=TRITON_PORTS[name],
                        show_default=True, help=f"{name} port (0: a free one).")


@click.command("serve")
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the endpoints listen on (0.0.0.0 exposes the server to your network).")
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
    from tinyvim.serve.server import TritonServer, find_triton

    install = find_triton(server_path)
    server = TritonServer(repo, host=host, install=install, log_path=log_file, extra_args=server_args,
                          ports={"http": http_port, "grpc": grpc_port, "metrics": metrics_port})
    _err(f"starting tritonserver ({install.origin}) on {repo}...")
    # SIGTERM (kill, systemd, docker stop) must stop the server too: treat it like Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        server.start(timeout)
        click.echo(f"serving {Path(repo).resolve()} with tritonserver PID {server.pid}")
        click.echo(f"  HTTP     http://{server.http_url}")
        click.echo(f"  gRPC     {server.grpc_url}")
        click.echo(f"  metrics  {server.metrics_url}")
        for m in server.models():
            click.echo(f"  model    {m['name']} version {m.get('version', '?')} {m.get('state', '?')}: "
                       f"POST http://{server.http_url}/v2/models/{m['name']}/infer")
        if host not in ("127.0.0.1", "localhost", "::1"):
            click.secho(f"note: listening on {host}, not only loopback: anyone who reaches this machine can "
                        "send requests", fg="yellow", err=True)
        click.echo("Ctrl-C stops the server")
        while server.alive():
            time.sleep(0.5)
        raise TinyvimError(f"tritonserver (PID {server.pid}) exited by itself with code {server.process.returncode}"
                           + (f": see {log_file}" if log_file else ""), exit_code=1)
    except KeyboardInterrupt:
        pass
    finally:
        code = server.stop()
        signal.signal(signal.SIGTERM, previous)
    click.echo(f"stopped tritonserver (PID {server.pid}, exit code {code})")


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


# --------------------------------------------------------------------- serve-bench
@click.command("serve-bench")
@click.option("--url", "http_url", default=f"127.0.0.1:{TRITON_PORTS['http']}", show_default=True,
              help="HTTP endpoint host:port (model metadata and statistics come from it).")
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
    from tinyvim.tools import profile as prof
    from tinyvim.serve.load import format_load_table, run_serve_bench
    from tinyvim.serve.server import TritonServer, find_triton

    protocols = [p.strip().lower() for p in protocol_text.split(",") if p.strip()]
    concurrencies = _int_list(concurrency_text, "--concurrency")
    check_output_paths({"--json": json_path, "--plot": plot_path}, inputs={"--compare-onnx": compare_onnx})
    if plot_path:
        prof.check_plot_output(plot_path)
    server = None
    if repo:
        server = TritonServer(repo, install=find_triton(server_path), ports={"http": 0, "grpc": 0, "metrics": 0})
        _err(f"starting tritonserver on {repo}...")
        server.start()
        http_url, grpc_url = server.http_url, server.grpc_url
    try:
        document = run_serve_bench(http_url, model_name, protocols=protocols, grpc_url=grpc_url,
                                   concurrencies=concurrencies, duration_s=duration, warmup_s=warmup, batch=batch,
                                   slices=slices, compare_onnx=compare_onnx, threads=threads, seed=seed, log=_err)
    finally:
        if server is not None:
            server.stop()
    env = document["environment"]
    click.echo(prof.format_environment(env, []))
    click.echo(format_load_table(document["results"]))
    for backend, ratios in document["throughput_ratio_vs_inprocess"].items():
        if ratios:
            click.echo(f"{backend} / ort-inprocess throughput: "
                       + ", ".join(f"{r:.2f}x at concurrency {c}" for c, r in ratios.items()))
    failed = sum(e["failed"] for e in document["results"])
    if json_path:
        atomic_write_json(json_path, document)
    if plot_path:
        shape = document["input"]["shape"]
        prof.plot_latency([e for e in document["results"] if "latency_ms" in e], plot_path,
                          title=f"{model_name} {'x'.join(map(str, shape[-2:]))}, batch {batch} per request",
                          x="concurrency", xlabel="concurrent requests")
    if failed:
        errors = sorted({msg for e in document["results"] for msg in e["errors"]})
        raise TinyvimError(f"{failed} request(s) failed: {'; '.join(errors[:3])}", exit_code=1)
