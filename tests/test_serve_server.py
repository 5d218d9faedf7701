"""A real tritonserver on 127.0.0.1 serving TinyViM-S (64x64) from `export --fmt triton`
(python backend): HTTP and gRPC answers against ONNX Runtime in-process, dynamic batching in
the server's statistics, malformed requests, a quiet server log, `serve-bench`, and stopping
the server by its PID. The repository also holds what an interrupted export of an older
tinyvim left in it (a hidden model folder), which the server must not try to load.

One server for the module (free loopback ports, stopped in the fixture's teardown even when a
test fails); the Ctrl-C test and the load-failure test start their own, briefly. Load is
bounded: at most 8 concurrent requests, about 1 s per measured window."""
from __future__ import annotations

import importlib.util
import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from serve_helpers import children, running, stand_in_onnx

from tinyvim.cli import cli
from tinyvim.tools.inputs import random_batches
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.errors import TinyvimError
from tinyvim.serve.load import settled_statistics, statistics_delta
from tinyvim.serve.repository import TritonSettings, write_repository
from tinyvim.serve.server import TritonServer, find_triton

httpclient = pytest.importorskip("tritonclient.http", reason="the serve extra is not installed: "
                                 "pip install 'tinyvim[serve]' && pip install --no-deps nvidia-pytriton==0.7.0")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="the serve extra is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

try:
    find_triton()
except TinyvimError as exc:
    pytest.skip(f"no tritonserver: {exc}", allow_module_level=True)

MODEL = "tinyvim"
SIZE = 64
#: Server and in-process run the same ONNX with the same ONNX Runtime; only the batch a row is
#: computed in may differ (the dynamic batcher's choice), which changes the convolutions'
#: blocking and so float32 rounding: measured <= 3e-7 on logits of magnitude ~0.5.
ATOL = 1e-5
#: long enough that concurrent requests from a busy 2-core CI machine still meet in one batch
QUEUE_DELAY_US = 100_000
FREE_PORTS = {"http": 0, "grpc": 0, "metrics": 0}
OV_MODEL = "tinyvim_openvino"
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """TinyViM-S 64x64 exported by the CLI as a python-backend repository."""
    root = tmp_path_factory.mktemp("triton")
    result = CliRunner().invoke(cli, ["export", "--fmt", "triton", "--img-size", str(SIZE), "-o", str(root / "repo"),
                                      "--max-batch-size", "8", "--max-queue-delay-us", str(QUEUE_DELAY_US),
                                      "--json", str(root / "export.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((root / "export.json").read_text())
    assert summary["metadata"]["variant"] == "s" and summary["metadata"]["input_size"] == f"{SIZE}x{SIZE}"
    if HAVE_OPENVINO:   # the same ONNX once more, run by OpenVINO inside the python backend
        write_repository(root / "repo", TritonSettings(model_name=OV_MODEL, python_runtime="openvino",
                                                       max_queue_delay_us=0),
                         onnx=root / "repo" / MODEL / "1" / "model.onnx")
    # an interrupted export's leftover (as tinyvim <= 0.1 staged inside the repository): Triton
    # loads every folder of a repository, and this one's config names another model
    leftover = root / "repo" / f".{MODEL}.k2x9q1zv"
    (leftover / "1").mkdir(parents=True)
    shutil.copy(root / "repo" / MODEL / "config.pbtxt", leftover / "config.pbtxt")
    return root / "repo"


#: the models `serve` lists: the repository's, not the leftover
SERVED = {MODEL, OV_MODEL} if HAVE_OPENVINO else {MODEL}


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    srv = TritonServer(repo, ports=FREE_PORTS, log_path=tmp_path_factory.mktemp("log") / "tritonserver.log")
    try:
        srv.start(timeout_s=120)
        assert {m["name"] for m in srv.models()} == SERVED
        yield srv
    finally:
        pid = srv.pid
        srv.stop()
        assert pid is None or not running(pid), f"tritonserver {pid} still runs after stop()"


@pytest.fixture(scope="module")
def reference(repo):
    """The repository's own ONNX in-process: what every server answer is compared with."""
    with OrtRunner(repo / MODEL / "1" / "model.onnx") as runner:
        yield lambda images: runner.infer({"images": images})["logits"]


def _images(batch: int, seed: int) -> np.ndarray:
    return random_batches(1, batch, (SIZE, SIZE), seed=seed)[0]


def _http_infer(server, images, datatype="FP32", name="images"):
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        request = httpclient.InferInput(name, list(images.shape), datatype)
        request.set_data_from_numpy(images, binary_data=True)
        return client.infer(MODEL, [request]).as_numpy("logits")
    finally:
        client.close()


def _grpc_infer(server, images, datatype="FP32"):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        request = grpcclient.InferInput("images", list(images.shape), datatype)
        request.set_data_from_numpy(images)
        return client.infer(MODEL, [request], client_timeout=60).as_numpy("logits")
    finally:
        client.close()


def test_http_and_grpc_answers_match_onnxruntime_in_process(server, reference):
    images = _images(3, seed=1)
    expected = reference(images)
    for protocol, infer in (("http", _http_infer), ("grpc", _grpc_infer)):
        got = infer(server, images)
        assert got.shape == (3, 1000) and got.dtype == np.float32, protocol
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL, err_msg=protocol)


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (it comes with the OpenVINO backend's "
                    "setup): the python backend's OpenVINO runtime is not checked")
def test_python_backend_on_openvino_matches_onnxruntime(server, reference):
    images = _images(2, seed=7)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        request = httpclient.InferInput("images", list(images.shape), "FP32")
        request.set_data_from_numpy(images, binary_data=True)
        got = client.infer(OV_MODEL, [request]).as_numpy("logits")
    finally:
        client.close()
    # OpenVINO at f32 (the model file pins INFERENCE_PRECISION_HINT) vs ONNX Runtime: different
    # kernels, same function; ~5e-7 against PyTorch measured on this project's CPU. 1e-4 leaves room for
    # another CPU's kernels, and bf16 (OpenVINO's default on AMX/AVX512-BF16 CPUs, ~2e-3) fails it.
    np.testing.assert_allclose(got, reference(images), rtol=0, atol=1e-4)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, reference):
    n = 8
    images = [_images(1, seed=100 + i) for i in range(n)]
    answers: dict[int, np.ndarray] = {}
    start = threading.Barrier(n)
    before = settled_statistics(server.http_url, MODEL)

    def send(i):
        start.wait()
        answers[i] = _http_infer(server, images[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    delta = statistics_delta(before, settled_statistics(server.http_url, MODEL))
    assert delta["successful_requests"] == n and delta["images"] == n
    # the dynamic batcher ran the 8 requests in fewer model calls, at least one with several
    assert delta["executions"] < n and max(delta["executions_by_batch_size"]) > 1, delta
    assert sum(size * count for size, count in delta["executions_by_batch_size"].items()) == n
    for i in range(n):   # rows split back to the right requests
        np.testing.assert_allclose(answers[i], reference(images[i]), rtol=0, atol=ATOL, err_msg=f"request {i}")


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server, reference):
    wrong_shape = _images(1, seed=2)[:, :, :32, :32].copy()
    with pytest.raises(InferenceServerException, match=r"unexpected shape.*images"):
        _http_infer(server, wrong_shape)
    with pytest.raises(InferenceServerException, match=r"unexpected shape.*images"):
        _grpc_infer(server, wrong_shape)
    as_fp64 = _images(1, seed=3).astype(np.float64)
    with pytest.raises(InferenceServerException, match=r"FP64.*expects 'FP32'"):
        _http_infer(server, as_fp64, datatype="FP64")
    with pytest.raises(InferenceServerException, match=r"FP64.*expects 'FP32'"):
        _grpc_infer(server, as_fp64, datatype="FP64")
    with pytest.raises(InferenceServerException, match="unexpected inference input 'pixels'"):
        _http_infer(server, _images(1, seed=4), name="pixels")
    # a JSON body whose data does not fill its shape (Triton 2.51 answers such a body with 500)
    body = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32",
                                   "data": [0.0] * 10}]}).encode()
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{MODEL}/infer", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code in (400, 500)
    assert "Shape does not match" in json.loads(info.value.read())["error"]
    # still alive, still right
    assert server.alive() and server.is_ready()
    images = _images(2, seed=5)
    np.testing.assert_allclose(_http_infer(server, images), reference(images), rtol=0, atol=ATOL)


def test_serve_bench_counts_agree_with_the_server_statistics(server, repo, tmp_path):
    out = tmp_path / "bench.json"
    # the URLs as `serve` prints them (with their scheme)
    result = CliRunner().invoke(cli, ["serve-bench", "--url", f"http://{server.http_url}",
                                      "--grpc-url", f"grpc://{server.grpc_url}",
                                      "--protocol", "http,grpc", "--concurrency", "1,3", "--duration", "0.8",
                                      "--slices", "2", "--warmup", "0.1", "--batch", "2", "--compare-onnx",
                                      str(repo / MODEL / "1" / "model.onnx"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    entries = {(e["backend"], e["concurrency"]): e for e in doc["results"]}
    assert set(entries) == {(b, c) for b in ("triton-http", "triton-grpc", "ort-inprocess") for c in (1, 3)}
    for (backend, _c), e in entries.items():
        assert e["failed"] == 0 and e["requests"] > 0 and e["windows"] == 2, e
        assert e["throughput"] == pytest.approx(e["requests"] * 2 / e["seconds"])
        if backend.startswith("triton"):
            # what the clients counted is what the server counted over both windows (nothing else talks
            # to it meanwhile)
            assert e["server"]["successful_requests"] == e["requests"], e
            assert e["server"]["images"] == 2 * e["requests"], e
    batched = entries[("triton-http", 3)]["server"]
    assert batched["executions"] < batched["successful_requests"], batched   # 3 clients met in batches
    assert set(doc["throughput_ratio_vs_inprocess"]["triton-grpc"]) == {"1", "3"}
    assert "triton-http / ort-inprocess throughput" in result.output


def test_the_server_log_stays_quiet_per_request(server, reference):
    """Nothing logged per request: the model file once made the stub log a 5-line
    `PyCapsule_GetPointer called with incorrect name` traceback for every answer (~130 MB/h at
    100 requests/s)."""
    before = server.log_path.stat().st_size
    images = _images(2, seed=11)
    for infer in (_http_infer, _grpc_infer, _http_infer):
        np.testing.assert_allclose(infer(server, images), reference(images), rtol=0, atol=ATOL)
    logged = server.log_path.read_bytes()[before:].decode(errors="replace")
    assert "Traceback" not in logged and "PyCapsule" not in logged, logged[:2000]
    assert "PyCapsule" not in server.log_path.read_text(errors="replace")


def _read_until(stream_queue: queue.Queue, pattern: str, timeout: float) -> list[str]:
    lines = []
    while True:
        line = stream_queue.get(timeout=timeout)
        if line is None:
            raise AssertionError(f"`tinyvim serve` exited before printing {pattern!r}: {''.join(lines)}")
        lines.append(line)
        if re.search(pattern, line):
            return lines


def test_serve_cli_stops_the_server_and_its_stubs_on_ctrl_c(repo):
    """`tinyvim serve` on IPv6 loopback where there is one (the server's HTTP and gRPC endpoints
    spell IPv6 addresses differently), listing the repository's models and not its leftover."""
    host = "::1" if _ipv6_loopback() else "127.0.0.1"
    url_host = re.escape("[::1]" if host == "::1" else host)
    proc = subprocess.Popen([sys.executable, "-m", "tinyvim.cli", "serve", str(repo), "--host", host,
                             "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: ([lines.put(x) for x in proc.stdout], lines.put(None)), daemon=True).start()
    server_pid = None
    try:
        printed = "".join(_read_until(lines, "Ctrl-C stops the server", timeout=120))
        server_pid = int(re.search(r"tritonserver PID (\d+)", printed).group(1))
        assert re.search(rf"model +{MODEL} version 1 READY: POST http://{url_host}:\d+/v2/models/{MODEL}/infer",
                         printed), printed
        assert set(re.findall(r"model +(\S+) version", printed)) == SERVED, printed
        grpc_url = re.search(r"gRPC +(\S+)", printed).group(1)
        assert re.fullmatch(rf"{url_host}:\d+", grpc_url), printed
        client = grpcclient.InferenceServerClient(grpc_url)
        try:
            assert client.is_model_ready(MODEL)
        finally:
            client.close()
        stubs = children(server_pid)
        assert stubs, "the python backend runs the model in a stub process"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        stopped = "".join(_read_until(lines, "stopped tritonserver", timeout=10))
        assert f"stopped tritonserver (PID {server_pid}, exit code 0)" in stopped
        assert not running(server_pid) and not any(running(p) for p in stubs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server_pid and running(server_pid):
            subprocess.run(["kill", "-9", str(server_pid)], check=False)


def test_a_model_the_server_cannot_load_is_one_line_naming_it(tmp_path):
    # this server has the python backend only: an onnxruntime-backend repository cannot load
    write_repository(tmp_path / "repo", TritonSettings(backend="onnxruntime", model_name="ort_model"),
                     onnx=stand_in_onnx(tmp_path / "s.onnx"))
    log = tmp_path / "no" / "such" / "folder" / "tritonserver.log"     # made for it
    srv = TritonServer(tmp_path / "repo", ports=FREE_PORTS, log_path=log)
    with pytest.raises(TinyvimError, match=r"model ort_model version 1: UNAVAILABLE.*backend 'onnxruntime'"):
        srv.start(timeout_s=60)
    assert srv.process.returncode is not None and not running(srv.pid)
    assert "UNAVAILABLE" in log.read_text()
