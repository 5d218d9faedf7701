"""`serve`, `serve-bench` and `export --fmt triton` on bad input and interruptions, without a
tritonserver: one `error:` line and exit code 2 before anything starts; a server whose answers
are broken is one line (exit 1) and is stopped; SIGTERM during an export leaves nothing behind.
The real server's side of these (IPv6, hidden folders, the log file) is in test_serve_server.py."""
from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from serve_helpers import hidden_entries

from tinyvim.cli import cli
from tinyvim.errors import TinyvimError
from tinyvim.serve.server import TritonServer, free_port, serve_until_stopped

pytest.importorskip("tritonclient.http", reason="the serve extra is not installed (pip install 'tinyvim[serve]')")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository with one (empty) model folder: enough for everything before the server runs."""
    (tmp_path / "repo" / "tinyvim").mkdir(parents=True)
    return tmp_path / "repo"


def _one_error_line(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output and lines[-1].startswith("error: "), result.output
    return lines[-1]


@pytest.mark.parametrize("args, message", [
    (["--host", "bogus.invalid"], "error: --host bogus.invalid: cannot resolve it"),
    (["--log-file", "/dev/stdout"], "error: cannot write --log-file /dev/stdout: /dev/stdout is a device"),
    (["--timeout", "nan"], "error: --timeout must be a finite number above 0 and at most 3600, got nan"),
    (["--timeout", "-1"], "error: --timeout must be a finite number above 0"),
    (["--timeout", "inf"], "error: --timeout must be a finite number above 0"),
    (["--http-port", "8500", "--grpc-port", "8500"], "error: --http-port and --grpc-port are both 8500"),
])
def test_serve_option_mistakes_are_one_line_before_any_start(repo, args, message, monkeypatch):
    started = []
    monkeypatch.setattr(TritonServer, "start", lambda self, *a, **k: started.append(self))
    line = _one_error_line(CliRunner().invoke(cli, ["serve", str(repo), *args]))
    assert line.startswith(message) and started == []


def test_serve_refuses_a_repository_without_a_model_folder(tmp_path):
    (tmp_path / "repo" / ".tinyvim.abcd1234" / "1").mkdir(parents=True)    # only a hidden leftover
    with pytest.raises(TinyvimError, match="holds no model folder"):
        TritonServer(tmp_path / "repo")


@pytest.mark.parametrize("url, message", [
    ("https://127.0.0.1:8000", "TLS (https://) is not supported"),
    ("grpc://127.0.0.1:8000", "expected http://host:port or host:port"),
    ("127.0.0.1", "is not host:port"),
    ("http://127.0.0.1:8000/v2", "is not host:port"),
    ("::1:8000", "([::1]:8000 for IPv6)"),
])
def test_serve_bench_url_mistakes_are_one_line(url, message):
    line = _one_error_line(CliRunner().invoke(cli, ["serve-bench", "--url", url, "--duration", "1"]))
    assert line.startswith(f"error: --url {url}") or line.startswith(f"error: --url {url!r}"), line
    assert message in line


def test_serve_bench_takes_the_url_serve_prints():
    """`serve` prints http://host:port: serve-bench takes it as given (here nothing listens)."""
    port = free_port()
    line = _one_error_line(CliRunner().invoke(cli, ["serve-bench", "--url", f"http://127.0.0.1:{port}",
                                                    "--duration", "1"]))
    assert line.startswith(f"error: no Triton server at 127.0.0.1:{port} ")


class _Answers(http.server.BaseHTTPRequestHandler):
    status, body = 200, b"[]"

    def do_POST(self):
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, body, message", [
    (500, b'{"error": "boom"}', "answered POST http://127.0.0.1:{port}/v2/repository/index with HTTP 500"),
    (200, b"<html>not json</html>", "answer to POST http://127.0.0.1:{port}/v2/repository/index is not JSON"),
    (200, b'{"models": []}', "is not a model index"),
])
def test_a_broken_model_index_is_one_line_and_the_server_is_stopped(repo, status, body, message):
    """`serve` lists the models once the server is ready; a server answering that with HTTP 500
    or not JSON is an error (exit 1), and serve_until_stopped still stops the server."""
    answers = type("Answers", (_Answers,), {"status": status, "body": body})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), answers)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    server = TritonServer(repo, ports={"http": port, "grpc": 0, "metrics": 0})
    stopped = []
    server.start = lambda timeout_s: setattr(server, "ports", {"http": port, "grpc": 1, "metrics": 2})
    server.stop = lambda: stopped.append(True) or 0
    try:
        with pytest.raises(TinyvimError, match=re.escape(message.format(port=port))) as info:
            serve_until_stopped(server, 5, on_ready=lambda srv: srv.models())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert info.value.exit_code == 1 and stopped == [True]


_SIGHUP_CHECK = """
import os, signal, time
from tinyvim.interrupt import Terminated, unwind_on_termination
before = signal.getsignal(signal.SIGHUP)
cleaned, caught = [], None
with unwind_on_termination():
    try:
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)           # the handler raises here at the latest
        finally:
            cleaned.append(True)
    except Terminated as exc:       # caught inside: nothing is re-delivered
        caught = exc.signum
print(caught == signal.SIGHUP, cleaned == [True], signal.getsignal(signal.SIGHUP) is before)
"""


def test_sighup_unwinds_like_ctrl_c_and_the_handler_comes_back():
    """In a fresh interpreter: signalling the test process itself crashed it (SIGSEGV) once
    OpenVINO's runtime had been loaded into it by earlier tests (see the session note)."""
    r = subprocess.run([sys.executable, "-c", _SIGHUP_CHECK], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "True"]


_SLOW_EXPORT = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
import tinyvim.export
from serve_helpers import stand_in_onnx
from tinyvim.cli import cli

def export_onnx(path, *, log=None, **kwargs):
    stand_in_onnx(Path(path), batch=None)
    print("staged", flush=True)
    time.sleep(60)

tinyvim.export.export_onnx = export_onnx
cli.main(["export", "--fmt", "triton", "--img-size", "64", "-o", {repo!r}])
"""


def test_a_terminated_triton_export_leaves_nothing_behind(tmp_path):
    """SIGTERM (kill, systemd, docker stop) cleans up like Ctrl-C: no staging folder beside or in
    the repository, nothing in TMPDIR; then the process ends by the signal."""
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    script = _SLOW_EXPORT.format(tests=str(Path(__file__).parent), repo=str(work / "repo"))
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        seen = []
        for line in proc.stdout:        # the model is in its staging folder, the export "running"
            seen.append(line)
            if line.strip() == "staged":
                break
        assert hidden_entries(work), "the export stages beside the repository"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM, "".join(seen) + proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(work.iterdir()) == [] and list(scratch.iterdir()) == []
