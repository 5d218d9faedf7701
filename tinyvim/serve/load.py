"""Load tests (`tinyvim serve-bench`): N concurrent clients, each sending one request and
waiting for its answer before sending the next (closed loop, like perf_analyzer's
--concurrency-range), for a fixed time; per-request latency, images/s, failed requests, and
the server's own batch statistics (its statistics endpoint, read before and after the window).
The same loop drives an in-process ONNX Runtime session for the side-by-side ratio.

Metadata and statistics always come from the HTTP endpoint (its JSON carries integers;
gRPC's JSON form spells int64 as strings and drops zeros); inference goes over the protocol
being measured. tritonclient is imported lazily: it is the `serve` extra.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from collections.abc import Callable


from tinyvim.backends.model_file import read_onnx_info
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.contract import (
    check_batch,
    check_count,
    check_positive_float,
    check_seed,
    check_threads,
)
from tinyvim.errors import TinyvimError
from tinyvim.interrupt import unwind_on_termination
from tinyvim.serve.server import TritonServer, find_triton
from tinyvim.tools.environment import default_threads, environment
from tinyvim.tools.inputs import random_batches
from tinyvim.tools.profile import latency_stats
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")

PROTOCOLS = ("http", "grpc")
#: the option that names each protocol's endpoint, for messages
URL_OPTIONS = {"http": "--url", "grpc": "--grpc-url"}
MAX_CONCURRENCY = 64
MAX_DURATION_S = 600.0
#: a request that takes longer counts as failed (and cannot hang a bounded test)
REQUEST_TIMEOUT_S = 60.0


def import_tritonclient(protocol: str):
    """tritonclient.http or tritonclient.grpc, or a one-line error saying how to install it."""
    if protocol not in PROTOCOLS:
        raise TinyvimError(f"unknown protocol {protocol!r}: choose {' or '.join(PROTOCOLS)}")
    try:
        if protocol == "http":
            import tritonclient.http as client
        else:
            import tritonclient.grpc as client
    except ImportError as exc:
        raise TinyvimError(f"tritonclient[{protocol}] is not installed ({exc}): pip install 'tinyvim[serve]'") from exc
    return client


def endpoint_address(url: str, protocol: str) -> str:
    """'host:port', what tritonclient takes, from what a user may give: host:port,
    <protocol>://host:port (the form `tinyvim serve` prints), [IPv6]:port. One-line errors
    for another scheme, TLS, a path, or no port."""
    what = URL_OPTIONS[protocol]
    text = str(url).strip()
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme:
        name = scheme.group(1).lower()
        if name in ("https", "grpcs"):
            raise TinyvimError(f"{what} {url}: TLS ({name}://) is not supported: serve-bench talks plain {protocol} "
                               "to the server; give host:port")
        if name != protocol:
            raise TinyvimError(f"{what} {url}: expected {protocol}://host:port or host:port")
        text = text[scheme.end():].rstrip("/")
    try:
        parts = urllib.parse.urlsplit("//" + text)
        port = parts.port
    except ValueError:      # 'http://[::1' (Invalid IPv6 URL), a port that is not a number
        parts, port = None, None
    if parts is None or not parts.hostname or port is None or not 1 <= port <= 65535 or parts.path or parts.query or parts.fragment \
            or parts.username is not None:
        raise TinyvimError(f"{what} {url!r} is not host:port: give e.g. 127.0.0.1:8000 or {protocol}://127.0.0.1:8000 "
                           "([::1]:8000 for IPv6)")
    return text


@dataclass(frozen=True)
class ModelEndpoint:
    """A served model as its server describes it."""
    http_url: str
    model: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]            # without the batch dimension when max_batch_size > 0
    outputs: tuple[str, ...]
    max_batch_size: int

    def check_batch(self, batch: int) -> None:
        limit = self.max_batch_size
        if limit and not 1 <= batch <= limit:
            raise TinyvimError(f"--batch {batch}: model {self.model} takes 1..{limit} images per request")
        if not limit and batch != self.shape[0]:
            raise TinyvimError(f"--batch {batch}: model {self.model} takes requests of its fixed shape "
                               f"{list(self.shape)} (max_batch_size 0): use --batch {self.shape[0]}")

    def request_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.shape) if self.max_batch_size else self.shape


def _http_client(url: str):
    return import_tritonclient("http").InferenceServerClient(url, connection_timeout=REQUEST_TIMEOUT_S,
                                                             network_timeout=REQUEST_TIMEOUT_S)


def describe_model(http_url: str, model: str) -> ModelEndpoint:
    """Ask the server for `model`'s input, outputs and max_batch_size; one-line errors when the
    server is not there or does not serve it."""
    client = _http_client(http_url)
    from tritonclient.utils import InferenceServerException
    try:
        if not client.is_server_live():
            raise TinyvimError(f"no live Triton server at {http_url}")
        if not client.is_model_ready(model):
            index = [m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"]
            raise TinyvimError(f"model {model!r} is not ready on {http_url} (ready: {', '.join(index) or 'none'}): "
                               "use --model NAME")
        meta = client.get_model_metadata(model)
        config = client.get_model_config(model)
    except InferenceServerException as exc:
        raise TinyvimError(f"Triton server at {http_url}: {exc.message()}") from None
    except (ConnectionError, OSError) as exc:
        raise TinyvimError(f"no Triton server at {http_url} ({exc}): start one with `tinyvim serve REPO`") from None
    finally:
        client.close()
    if len(meta["inputs"]) != 1:
        raise TinyvimError(f"model {model!r} has {len(meta['inputs'])} inputs; serve-bench sends one image tensor")
    spec = meta["inputs"][0]
    max_batch = int(config.get("max_batch_size", 0))
    dims = tuple(int(d) for d in spec["shape"])
    shape = dims[1:] if max_batch else dims
    if any(d < 0 for d in shape):
        raise TinyvimError(f"model {model!r} has dynamic dims {list(dims)}: serve-bench needs a fixed image size")
    return ModelEndpoint(http_url, model, spec["name"], spec["datatype"], shape,
                         tuple(o["name"] for o in meta["outputs"]), max_batch)


def server_statistics(http_url: str, model: str) -> dict:
    """The cumulative statistics entry of `model` (GET /v2/models/<model>/stats)."""
    client = _http_client(http_url)
    from tritonclient.utils import InferenceServerException
    try:
        stats = client.get_inference_statistics(model)["model_stats"]
    except InferenceServerException as exc:
        raise TinyvimError(f"Triton server at {http_url}: {exc.message()}") from None
    except (ConnectionError, OSError) as exc:   # it answered describe_model, then went away
        raise TinyvimError(f"the Triton server at {http_url} stopped answering during the run ({exc}): "
                           "see its log, then run serve-bench again") from None
    finally:
        client.close()
    return stats[0] if stats else {}


def settled_statistics(http_url: str, model: str, timeout_s: float = 5.0) -> dict:
    """`server_statistics` once they stop changing. Triton records a request's statistics when it
    releases the request, which can be just after the client has its answer: a snapshot taken the
    moment the last client returns can miss the last requests."""
    def counts(stats):
        inference = stats.get("inference_stats", {})
        return (stats.get("inference_count"), stats.get("execution_count"),
                inference.get("success", {}).get("count"), inference.get("fail", {}).get("count"))

    deadline = time.monotonic() + timeout_s
    stats = server_statistics(http_url, model)
    while True:
        time.sleep(0.05)
        again = server_statistics(http_url, model)
        if counts(again) == counts(stats) or time.monotonic() > deadline:
            return again
        stats = again


def statistics_delta(before: dict, after: dict) -> dict:
    """What the server did between two statistics snapshots: requests (inference_count counts
    images), executions (model calls), executions per batch size, failed requests, time in the
    queue and in the model (ns, summed over requests), and from those the mean batch and the
    mean queue and compute time per request in ms."""
    def count(s, *path):
        for key in path:
            s = s.get(key, {})
        return int(s or 0)

    def diff(*path):
        return count(after, *path) - count(before, *path)

    batches_before = {b["batch_size"]: count(b, "compute_infer", "count") for b in before.get("batch_stats", [])}
    batches = {}
    for b in after.get("batch_stats", []):
        n = count(b, "compute_infer", "count") - batches_before.get(b["batch_size"], 0)
        if n:
            batches[int(b["batch_size"])] = n
    return _derived({"images": diff("inference_count"), "executions": diff("execution_count"),
                     "successful_requests": diff("inference_stats", "success", "count"),
                     "failed_requests": diff("inference_stats", "fail", "count"),
                     "executions_by_batch_size": dict(sorted(batches.items())),
                     "queue_ns": diff("inference_stats", "queue", "ns"),
                     "compute_ns": diff("inference_stats", "compute_infer", "ns")})


def merge_deltas(deltas: list[dict]) -> dict:
    """The statistics of several windows as one."""
    total: dict = {k: sum(d[k] for d in deltas) for k in ("images", "executions", "successful_requests",
                                                           "failed_requests", "queue_ns", "compute_ns")}
    batches: dict[int, int] = {}
    for d in deltas:
        for size, n in d["executions_by_batch_size"].items():
            batches[size] = batches.get(size, 0) + n
    total["executions_by_batch_size"] = dict(sorted(batches.items()))
    return _derived(total)


def _derived(raw: dict) -> dict:
    ok = raw["successful_requests"]
    return {**raw, "mean_batch": raw["images"] / raw["executions"] if raw["executions"] else None,
            "queue_ms_per_request": raw["queue_ns"] / ok / 1e6 if ok else None,
            "compute_ms_per_request": raw["compute_ns"] / ok / 1e6 if ok else None}


# --------------------------------------------------------------------- the closed loop
@dataclass
class _Worker:
    call: Callable[[], None]
    latencies: list
    errors: list
    started: float = 0.0
    finished: float = 0.0


def drive(make_call: Callable[[], Callable[[], None]], concurrency: int, duration_s: float, *,
          warmup_s: float = 1.0, between: Callable[[], None] = lambda: None) -> dict:
    """Run `concurrency` threads, each calling its own `make_call()` back to back: first for
    `warmup_s` (not measured), then - after every thread's warm-up request has returned and
    `between()` has run (a statistics snapshot) - for `duration_s`. Each thread stops sending
    at the deadline and waits for its last answer. Returns latencies (s), errors (first
    message of each failure) and the wall time of the measured window."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise TinyvimError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {concurrency}")
    if not 0 < duration_s <= MAX_DURATION_S or not 0 <= warmup_s <= MAX_DURATION_S:
        raise TinyvimError(f"--duration must be in (0, {MAX_DURATION_S:.0f}] s and --warmup in [0, "
                           f"{MAX_DURATION_S:.0f}] s")
    workers = [_Worker(make_call(), [], []) for _ in range(concurrency)]
    warm = threading.Barrier(concurrency + 1)
    go = threading.Barrier(concurrency + 1)
    window: dict = {}

    def loop(w: _Worker, until: float, record: bool) -> None:
        while True:
            t0 = time.perf_counter()
            try:
                w.call()
                if record:
                    w.latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - a failed request is a measurement, not a crash
                if record:
                    first = (str(exc).strip().splitlines() or [""])[0]
                    w.errors.append(f"{type(exc).__name__}: {first}")
            if time.perf_counter() >= until:
                return

    def run(w: _Worker) -> None:
        try:
            if warmup_s > 0:
                loop(w, time.perf_counter() + warmup_s, record=False)
            warm.wait()
            go.wait()
            w.started = time.perf_counter()
            loop(w, window["deadline"], record=True)
            w.finished = time.perf_counter()
        except threading.BrokenBarrierError:
            pass

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        warm.wait()
        between()
        window["deadline"] = time.perf_counter() + duration_s
        go.wait()
    except BaseException:
        warm.abort()
        go.abort()
        raise
    finally:
        for t in threads:
            t.join()
        for w in workers:   # a sender that holds a connection closes it
            getattr(w.call, "close", lambda: None)()
    start = min(w.started for w in workers)
    latencies = [x for w in workers for x in w.latencies]
    errors = [e for w in workers for e in w.errors]
    return {"latencies": latencies, "errors": errors, "seconds": max(w.finished for w in workers) - start}


def _summary(backend: str, batch: int, concurrency: int, windows: list[dict]) -> dict:
    """One report entry from one or more measured windows of the same (backend, concurrency)."""
    latencies = [x for w in windows for x in w["latencies"]]
    errors = [e for w in windows for e in w["errors"]]
    seconds = sum(w["seconds"] for w in windows)
    entry = {"backend": backend, "batch": batch, "concurrency": concurrency, "requests": len(latencies),
             "failed": len(errors), "seconds": seconds, "windows": len(windows),
             "throughput": len(latencies) * batch / seconds if seconds else 0.0, "errors": sorted(set(errors))[:5]}
    if latencies:
        entry["latency_ms"] = latency_stats(latencies)
    if windows and "server" in windows[0]:
        entry["server"] = merge_deltas([w["server"] for w in windows])
    return entry


def triton_caller(endpoint: ModelEndpoint, protocol: str, url: str, batch: int, seed: int = 0):
    """A factory of request senders for `drive`: each gets its own client (tritonclient clients
    are not shared between threads) and sends the same `batch` random images."""
    client_mod = import_tritonclient(protocol)
    endpoint.check_batch(batch)
    images = random_batches(1, batch, endpoint.shape[-2:], seed=seed)[0].astype(_numpy_dtype(endpoint.datatype))
    if images.shape != endpoint.request_shape(batch):
        raise TinyvimError(f"model {endpoint.model} takes {list(endpoint.request_shape(batch))}, not images "
                           f"(batch, 3, H, W): serve-bench sends TinyViM image batches")

    return lambda: _Sender(client_mod, protocol, url, endpoint, images)


class _Sender:
    """One client thread's connection and request; calling it sends the request and waits."""

    def __init__(self, client_mod, protocol: str, url: str, endpoint: ModelEndpoint, images: np.ndarray):
        if protocol == "http":
            self.client = client_mod.InferenceServerClient(url, connection_timeout=REQUEST_TIMEOUT_S,
                                                           network_timeout=REQUEST_TIMEOUT_S)
            self.kwargs = {}
        else:
            self.client = client_mod.InferenceServerClient(url)
            self.kwargs = {"client_timeout": REQUEST_TIMEOUT_S}
        self.request = client_mod.InferInput(endpoint.input_name, list(images.shape), endpoint.datatype)
        if protocol == "http":
            self.request.set_data_from_numpy(images, binary_data=True)
        else:
            self.request.set_data_from_numpy(images)
        self.outputs = [client_mod.InferRequestedOutput(n) for n in endpoint.outputs]
        self.model = endpoint.model

    def __call__(self) -> None:
        self.client.infer(self.model, [self.request], outputs=self.outputs, **self.kwargs)

    def close(self) -> None:
        self.client.close()


def triton_window(endpoint: ModelEndpoint, make_call, concurrency: int, duration_s: float,
                  warmup_s: float) -> dict:
    """One measured window against the server, with the server's statistics of that window."""
    snapshots = {}
    result = drive(make_call, concurrency, duration_s, warmup_s=warmup_s,
                   between=lambda: snapshots.setdefault("before", settled_statistics(endpoint.http_url,
                                                                                     endpoint.model)))
    result["server"] = statistics_delta(snapshots["before"], settled_statistics(endpoint.http_url, endpoint.model))
    return result


def inprocess_runner(onnx_path: str, batch: int, threads: int | None = None, seed: int = 0):
    """(an ONNX Runtime runner of `onnx_path`, not yet active; its feed of `batch` random images):
    what the server is compared with. Its session.run is thread-safe and releases the GIL, so
    `concurrency` threads share one session."""

    info = read_onnx_info(onnx_path)
    if not info.fixed_size:
        raise TinyvimError(f"{onnx_path} has a dynamic image size: in-process comparison needs a fixed one")
    problem = info.batch_problem(batch)
    if problem:
        raise TinyvimError(f"--batch {batch}: {onnx_path}: {problem}")
    feed = {info.input_name: random_batches(1, batch, info.fixed_size, seed=seed)[0]}
    return OrtRunner(onnx_path, threads=threads, allow_plugin_cpu=False), feed


def _numpy_dtype(datatype: str):
    from tritonclient.utils import triton_to_np_dtype
    dtype = triton_to_np_dtype(datatype)
    if dtype is None or dtype is np.object_:
        raise TinyvimError(f"serve-bench sends image tensors; the model's input is {datatype}")
    return dtype


# --------------------------------------------------------------------- reporting
def format_load_table(entries: list[dict]) -> str:
    """One line per (backend, concurrency): latency percentiles, images/s, failures, and the
    server's mean batch and queue time (what dynamic batching did)."""
    header = (f"{'backend':<14} {'conc':>4} {'batch':>5} {'requests':>8} {'failed':>6} {'p50':>8} {'p90':>8} "
              f"{'p99':>8} {'img/s':>8} {'srv batch':>9} {'queue':>7}")
    lines = [header + "   (latency and queue in ms)", "-" * len(header)]
    for e in entries:
        s = e.get("latency_ms") or {}
        srv = e.get("server") or {}
        lines.append(f"{e['backend']:<14} {e['concurrency']:>4} {e['batch']:>5} {e['requests']:>8} {e['failed']:>6} "
                     f"{_fmt(s.get('p50'), '8.2f'):>8} {_fmt(s.get('p90'), '8.2f'):>8} {_fmt(s.get('p99'), '8.2f'):>8} "
                     f"{e['throughput']:8.1f} {_fmt(srv.get('mean_batch'), '9.2f'):>9} "
                     f"{_fmt(srv.get('queue_ms_per_request'), '7.2f'):>7}")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def throughput_ratios(entries: list[dict], target: str, reference: str = "ort-inprocess") -> dict[int, float]:
    """{concurrency: throughput of `target` / throughput of `reference`} where both were measured."""
    ref = {e["concurrency"]: e["throughput"] for e in entries if e["backend"] == reference and e["throughput"]}
    return {e["concurrency"]: e["throughput"] / ref[e["concurrency"]]
            for e in entries if e["backend"] == target and e["concurrency"] in ref}


SCHEMA_VERSION = 1


def check_bench_settings(*, protocols=("http",), concurrencies=(1, 4, 8), duration_s: float = 10.0,
                         warmup_s: float = 2.0, batch: int = 1, slices: int = 1, threads: int | None = None,
                         seed: int = 0, **_ignored) -> list[str]:
    """Every serve-bench number and name, before any request and before `--repo` starts a
    server (a NaN duration would never end, a huge one never report). Returns the protocols,
    duplicates dropped."""
    protocols = list(dict.fromkeys(protocols))
    unknown = [p for p in protocols if p not in ("http", "grpc")]
    if unknown or not protocols:
        raise TinyvimError(f"--protocol {','.join(protocols) or '(none)'}: choose http, grpc or http,grpc")
    check_positive_float(duration_s, "--duration", MAX_DURATION_S)
    if warmup_s != 0:
        check_positive_float(warmup_s, "--warmup", MAX_DURATION_S)
    check_batch(batch)
    check_threads(threads)
    check_seed(seed)
    for c in concurrencies:
        check_count(c, "--concurrency", maximum=MAX_CONCURRENCY)
    if not 1 <= slices <= 100 or duration_s / slices < 0.2:
        raise TinyvimError(f"--slices must be 1..100 and leave at least 0.2 s per window, got {slices} for "
                           f"{duration_s:g} s")
    return protocols


def run_serve_bench(http_url: str, model: str, *, protocols=("http",), grpc_url: str | None = None,
                    concurrencies=(1, 4, 8), duration_s: float = 10.0, warmup_s: float = 2.0, batch: int = 1,
                    slices: int = 1, compare_onnx: str | None = None, threads: int | None = None, seed: int = 0,
                    log: Callable[[str], None] = print) -> dict:
    """`tinyvim serve-bench`: a closed-loop load test of a served model at each concurrency, over
    each protocol, and (with `compare_onnx`) the same load on in-process ONNX Runtime. Each
    concurrency's `duration_s` is measured in `slices` windows taken in turn (server over each
    protocol, then in-process, then again), so that load drift on a shared machine hits every
    target alike; `warmup_s` of unmeasured requests precede each window. Returns the JSON
    document: settings, environment, one entry per (backend, concurrency) and the throughput
    ratios server / in-process."""
    protocols = check_bench_settings(protocols=protocols, concurrencies=concurrencies, duration_s=duration_s,
                                     warmup_s=warmup_s, batch=batch, slices=slices, threads=threads, seed=seed)
    if "grpc" in protocols and not grpc_url:
        raise TinyvimError("--protocol grpc needs --grpc-url host:port")
    concurrencies = list(dict.fromkeys(concurrencies))
    http_url = endpoint_address(http_url, "http")
    if "grpc" in protocols:
        grpc_url = endpoint_address(grpc_url, "grpc")
    endpoint = describe_model(http_url, model)
    urls = {"http": http_url, "grpc": grpc_url}
    callers = {f"triton-{p}": triton_caller(endpoint, p, urls[p], batch, seed) for p in protocols}
    runner, feed = inprocess_runner(compare_onnx, batch, threads, seed) if compare_onnx else (None, None)
    window_s = duration_s / slices
    entries = []
    with runner if runner is not None else contextlib.nullcontext():
        for c in concurrencies:
            windows: dict[str, list[dict]] = {name: [] for name in callers}
            if runner is not None:
                windows["ort-inprocess"] = []
            log(f"concurrency {c}: {', '.join(windows)}, {duration_s:g} s each"
                + (f" in {slices} alternating windows" if slices > 1 else "") + "...")
            for _ in range(slices):
                for name, make_call in callers.items():
                    windows[name].append(triton_window(endpoint, make_call, c, window_s, warmup_s))
                if runner is not None:
                    windows["ort-inprocess"].append(
                        drive(lambda: (lambda: runner.infer(feed)), c, window_s, warmup_s=warmup_s))
            for name, ws in windows.items():
                entries.append(_summary(name, batch, c, ws))
                log(_one_line(entries[-1]))
    ratios = {name: throughput_ratios(entries, name) for name in callers} if compare_onnx else {}
    return {"schema_version": SCHEMA_VERSION, "model": model, "http_url": http_url, "grpc_url": grpc_url,
            "input": {"name": endpoint.input_name, "datatype": endpoint.datatype, "shape": list(endpoint.shape),
                      "max_batch_size": endpoint.max_batch_size},
            "environment": environment(threads or default_threads()),
            "settings": {"concurrency": concurrencies, "protocols": protocols, "duration_s": duration_s,
                         "slices": slices, "warmup_s": warmup_s, "batch": batch, "compare_onnx": compare_onnx,
                         "threads": threads, "seed": seed},
            "results": entries, "throughput_ratio_vs_inprocess": ratios}


def bench_repository(repo: str | os.PathLike, model: str, *, server_path: str | os.PathLike | None = None,
                     timeout_s: float = 120.0, log: Callable[[str], None] = print, **bench) -> dict:
    """`serve-bench --repo`: run_serve_bench against a tritonserver started on `repo` for the
    run (loopback, free ports) and stopped after it - also on an error, Ctrl-C or SIGTERM."""
    check_bench_settings(**bench)     # a bad number is said before a server is started for it
    server = TritonServer(repo, install=find_triton(server_path), ports={"http": 0, "grpc": 0, "metrics": 0})
    log(f"starting tritonserver on {repo}...")
    with unwind_on_termination():
        server.start(timeout_s)
        try:
            return run_serve_bench(server.http_url, model, grpc_url=server.grpc_url, log=log, **bench)
        finally:
            server.stop()


def _one_line(entry: dict) -> str:
    s = entry.get("latency_ms") or {}
    return (f"  {entry['backend']} concurrency {entry['concurrency']}: {entry['throughput']:.1f} img/s, "
            f"p50 {s.get('p50', float('nan')):.2f} ms, {entry['failed']} failed")
