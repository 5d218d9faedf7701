"""CLI commands `validate`, `profile` and `build-engine`: parse, call tinyvim.engines, print.

Expected failures are TinyvimError (one line, exit code 2 unless it says otherwise); a
validation that runs but is out of tolerance exits 1.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import click

from tinyvim.errors import TinyvimError

ALL_BACKENDS = ("torch", "torch-fused", "ort", "trt")


class _ExpectedFailure(click.ClickException):
    """One line 'error: <message>' on stderr (as tinyvim.cli prints it), no traceback, and
    the TinyvimError's exit code - also when a command runs outside the `tinyvim` group."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.secho(f"error: {self.format_message()}", fg="red", err=True)


def _one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TinyvimError as exc:
            raise _ExpectedFailure(str(exc), exc.exit_code) from None
    return wrapper


def _err(message: str) -> None:
    click.echo(message, err=True)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise TinyvimError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise TinyvimError(f"{what} must list integers >= 1, got {text!r}")
    return values


def _write_json(path: str, document: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


# --------------------------------------------------------------------- validate
@click.command("validate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(["ort", "trt"]), default=None,
              help="Backend to check [default: ort for .onnx, trt for .engine].")
@click.option("--providers", default=None, help="ONNX Runtime providers, comma list (cpu, cuda, ...) [default: cpu].")
@click.option("--threads", type=int, default=None, help="Intra-op threads for both runs [default: all cores].")
@click.option("--plugin", type=click.Path(dir_okay=False), default=None, help="Scan plugin library (trt).")
@click.option("--variant", type=click.Choice(["s", "b", "l"], case_sensitive=False), default=None,
              help="Override / fill in the variant recorded in the model.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Checkpoint of the reference.")
@click.option("--ema/--no-ema", default=None, help="Use the checkpoint's EMA weights.")
@click.option("--backbone/--no-backbone", default=None, help="Model is the 4-feature-map backbone.")
@click.option("--img-size", default=None, help="H or HxW, multiples of 32 [default: from the model].")
@click.option("--init-seed", type=int, default=None, help="Seed of a randomly initialised reference.")
@click.option("--batch", type=int, default=None, help="Images per inference [default: the model's batch, or 1].")
@click.option("--num-inputs", type=int, default=4, show_default=True, help="Number of random input batches.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="Folder of pictures to use instead of random inputs (ImageNet preprocessing).")
@click.option("--crop-pct", type=float, default=0.875, show_default=True, help="Centre-crop fraction for --images.")
@click.option("--atol", type=float, default=None, help="Absolute tolerance [default: by precision].")
@click.option("--rtol", type=float, default=None, help="Relative tolerance [default: by precision].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the JSON report.")
@click.pass_context
@_one_line_errors
def validate(ctx, model, backend, providers, threads, plugin, variant, checkpoint, ema, backbone, img_size,
             init_seed, batch, num_inputs, seed, images, crop_pct, atol, rtol, json_path):
    """Check an exported MODEL (.onnx, or .engine) against the PyTorch reference.

    Exit status: 0 within tolerance, 1 out of tolerance, 2 bad input or missing dependency."""
    from tinyvim.engines.compare import tolerance_for
    from tinyvim.engines.inputs import image_batches, random_batches
    from tinyvim.engines.model_info import read_model_info
    from tinyvim.engines.ort_runner import OrtRunner, parse_providers
    from tinyvim.engines.profile import default_threads
    from tinyvim.engines.torch_runner import TorchRunner
    from tinyvim.engines.validate import format_table, make_report, resolve_reference, validate_runner

    info = read_model_info(model)
    backend = backend or ("trt" if info.kind == "engine" else "ort")
    if backend == "ort" and info.kind == "engine":
        raise TinyvimError(f"{model} is a TensorRT engine: validate it with --backend trt")
    if backend == "trt" and info.kind == "onnx":
        raise TinyvimError(f"--backend trt needs an engine: build one with `tinyvim build-engine {model}`")
    if num_inputs < 1:
        raise TinyvimError(f"--num-inputs must be >= 1, got {num_inputs}")
    config, warnings = resolve_reference(info, variant=variant, checkpoint=checkpoint, ema=ema, backbone=backbone,
                                         img_size=img_size, init_seed=init_seed, batch=batch)
    for w in warnings:
        _err(f"warning: {w}")
    precision = info.metadata.get("precision") or "fp32"
    try:
        tolerance = tolerance_for(precision, atol, rtol)
    except ValueError as exc:
        raise TinyvimError(str(exc)) from None

    if images:
        batches, names = image_batches(images, config.batch, config.img_size, limit=None, crop_pct=crop_pct)
        inputs = {"source": "images", "num_batches": len(batches), "batch": config.batch, "seed": None,
                  "images": names}
    else:
        batches = random_batches(num_inputs, config.batch, config.img_size, seed)
        inputs = {"source": "random", "num_batches": num_inputs, "batch": config.batch, "seed": seed, "images": None}

    threads = threads or default_threads()
    if backend == "ort":
        provider_list = parse_providers(providers)
        target = OrtRunner(model, providers=provider_list, threads=threads)
    else:
        from tinyvim.engines.trt_runner import TrtRunner
        provider_list = None
        target = TrtRunner(model, plugin=plugin, log=_err)
    reference = TorchRunner.for_backend("torch", config.variant, checkpoint=config.checkpoint, ema=config.ema,
                                        backbone=config.backbone, seed=config.init_seed, threads=threads)
    _err(f"validating {model} ({backend}) against TinyViM-{config.variant.upper()} "
         f"{config.img_size[0]}x{config.img_size[1]} on {inputs['num_batches']} batch(es) of {config.batch}...")
    result = validate_runner(target, reference, batches, tolerance)
    report = make_report(result, info=info, config=config, backend=backend, providers=provider_list, inputs=inputs,
                         precision=precision, warnings=warnings)
    click.echo(format_table(report))
    if json_path:
        _write_json(json_path, report)
    ctx.exit(0 if report["passed"] else 1)


# --------------------------------------------------------------------- profile
def _backend_list(values: tuple[str, ...]) -> list[str]:
    names = []
    for v in values:
        for name in (s.strip().lower() for s in v.split(",")):
            if not name:
                continue
            if name not in ALL_BACKENDS:
                raise TinyvimError(f"unknown backend {name!r}; choose from {', '.join(ALL_BACKENDS)}")
            if name not in names:
                names.append(name)
    return names


@click.command("profile")
@click.option("--backend", "backends", multiple=True, default=("torch", "ort"), show_default=True,
              help="torch | torch-fused | ort | trt; repeat or comma-separate.")
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False),
              help="ONNX file for ort and/or engine for trt [ort default: export one to a temp dir].")
@click.option("--variant", type=click.Choice(["s", "b", "l"], case_sensitive=False), default=None,
              help="Variant [default: from --model metadata, else s].")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None)
@click.option("--ema/--no-ema", default=False)
@click.option("--img-size", default=None, help="H or HxW [default: from --model, else 224].")
@click.option("--batch", "batch_text", default="1", show_default=True, help="Batch sizes, comma list, e.g. 1,8,32.")
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--iters", type=int, default=20, show_default=True)
@click.option("--duration", type=float, default=None, help="Seconds per configuration instead of --iters.")
@click.option("--threads", type=int, default=None, help="torch / ORT intra-op threads [default: all cores].")
@click.option("--providers", default=None, help="ONNX Runtime providers, comma list [default: cpu].")
@click.option("--plugin", type=click.Path(dir_okay=False), default=None, help="Scan plugin library (trt).")
@click.option("--cuda-graph/--no-cuda-graph", default=False, help="Replay TensorRT inference as a CUDA graph.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Latency-vs-batch PNG.")
@_one_line_errors
def profile(backends, models, variant, checkpoint, ema, img_size, batch_text, warmup, iters, duration, threads,
            providers, plugin, cuda_graph, seed, json_path, plot_path):
    """Measure latency and throughput of TinyViM on several backends and batch sizes."""
    from tinyvim.engines import profile as prof
    from tinyvim.engines.model_info import parse_size, read_model_info
    from tinyvim.engines.ort_runner import OrtRunner
    from tinyvim.engines.torch_runner import TorchRunner

    names = _backend_list(backends)
    batches = _int_list(batch_text, "--batch")
    if warmup < 0 or iters < 1 or (duration is not None and duration <= 0):
        raise TinyvimError("--warmup must be >= 0, --iters >= 1 and --duration > 0")
    onnx_info = engine_info = None
    for m in models:
        info = read_model_info(m)
        if info.kind == "engine":
            engine_info = info
        else:
            onnx_info = info
    if "trt" in names and engine_info is None:
        raise TinyvimError("--backend trt needs --model ENGINE (build one with `tinyvim build-engine MODEL.onnx`)")
    known = onnx_info or engine_info
    meta = known.metadata if known else {}
    variant = (variant or meta.get("variant") or "s").lower()
    size = parse_size(img_size) if img_size else (known.fixed_size if known and known.fixed_size else
                                                  parse_size(meta.get("input_size") or "224"))
    for info in (onnx_info, engine_info):
        if info and info.fixed_size and info.fixed_size != size:
            raise TinyvimError(f"--img-size {size[0]}x{size[1]} does not match {info.path} "
                               f"({info.fixed_size[0]}x{info.fixed_size[1]})")
    threads = threads or prof.default_threads()

    with tempfile.TemporaryDirectory(prefix="tinyvim-profile-") as tmp:
        onnx_path = onnx_info.path if onnx_info else None
        if "ort" in names and onnx_path is None:
            onnx_path = _export_for_profile(Path(tmp) / "tinyvim.onnx", variant, checkpoint, ema, size)
            onnx_info = read_model_info(onnx_path)

        factories = {}
        for name in names:
            if name in ("torch", "torch-fused"):
                factories[name] = functools.partial(TorchRunner.for_backend, name, variant, checkpoint=checkpoint,
                                                    ema=ema, seed=int(meta.get("init_seed") or 0), threads=threads)
            elif name == "ort":
                # The plugin graph's CPU path runs the scan in Python: not a speed worth reporting.
                factories[name] = functools.partial(OrtRunner, onnx_path, providers=providers, threads=threads,
                                                    allow_plugin_cpu=False)
            else:
                from tinyvim.engines.trt_runner import TrtRunner
                factories[name] = functools.partial(TrtRunner, engine_info.path, plugin=plugin,
                                                    cuda_graph=cuda_graph, log=_err)

        def batch_ok(name: str, b: int) -> str | None:
            info = {"ort": onnx_info, "trt": engine_info}.get(name)
            if info is None:
                return None
            if info.fixed_batch and b != info.fixed_batch:
                return f"model has a fixed batch of {info.fixed_batch}"
            hi = info.metadata.get("max_batch")
            if hi and b > int(hi):
                return f"engine's max batch is {hi}"
            return None

        env = prof.environment(threads)
        _err(f"profiling TinyViM-{variant.upper()} {size[0]}x{size[1]} on {', '.join(names)}, batch "
             f"{', '.join(map(str, batches))}, {threads} thread(s)")
        entries = prof.profile_backends(factories, batches, size, warmup=warmup, iters=None if duration else iters,
                                        duration=duration, seed=seed, log=_err, batch_ok=batch_ok)

    click.echo(f"CPU: {env['cpu']} ({env['cores']} cores, {threads} threads); python {env['python']}, "
               f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, onnx {env['onnx']}"
               + (f", TensorRT {env['tensorrt']} on {env['gpu']}" if "trt" in names else ""))
    click.echo(prof.format_table(entries))
    document = {"schema_version": 1, "variant": variant, "img_size": list(size), "checkpoint": checkpoint,
                "environment": env, "settings": {"warmup": warmup, "iters": None if duration else iters,
                                                 "duration_s": duration, "threads": threads, "seed": seed},
                "results": entries}
    if json_path:
        _write_json(json_path, document)
    if plot_path:
        prof.plot_latency(entries, plot_path, title=f"TinyViM-{variant.upper()} {size[0]}x{size[1]}, {threads} threads")


def _export_for_profile(path: Path, variant: str, checkpoint, ema: bool, size) -> str:
    """Export a dynamic-batch portable ONNX for ORT when --model was not given."""
    try:
        from tinyvim.export import export_onnx
    except ImportError as exc:
        raise TinyvimError(f"the ONNX export is not available ({exc}): pass --model MODEL.onnx") from exc
    _err(f"exporting TinyViM-{variant.upper()} to a temporary ONNX for ort...")
    result = export_onnx(path, variant=variant, checkpoint=checkpoint, ema=ema, img_size=tuple(size),
                         dynamic_batch=True)
    return os.fspath(result.path)


# --------------------------------------------------------------------- build-engine
@click.command("build-engine")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Engine path [default: MODEL.<precision>.engine].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--min-batch", type=int, default=1, show_default=True)
@click.option("--opt-batch", type=int, default=None, help="[default: --max-batch]")
@click.option("--max-batch", type=int, default=None, help="[default: --opt-batch, else --min-batch]")
@click.option("--workspace", type=int, default=None, help="Builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Read / update this timing cache (faster rebuilds).")
@click.option("--plugin", type=click.Path(dir_okay=False), default=None,
              help="Scan plugin library [default: tinyvim.plugins.find_plugin_library()].")
@click.option("--builder-optimization-level", type=click.IntRange(0, 5), default=None)
@_one_line_errors
def build_engine(model, output, precision, min_batch, opt_batch, max_batch, workspace, timing_cache, plugin,
                 builder_optimization_level):
    """Build a TensorRT engine (and its JSON sidecar) from a TinyViM ONNX MODEL."""
    from tinyvim.engines.trt_build import build_engine as build

    result = build(model, output, precision=precision, min_batch=min_batch, opt_batch=opt_batch,
                   max_batch=max_batch, workspace_mib=workspace, timing_cache=timing_cache, plugin=plugin,
                   builder_optimization_level=builder_optimization_level, log=_err)
    click.echo(f"wrote {result.engine_path} and {result.sidecar_path} ({precision}, built in {result.seconds:.1f} s)")
