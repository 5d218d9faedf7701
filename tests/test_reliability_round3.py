"""Reliability and first-use round 3 (issue 26): each root cause of a 347-case run as a test.

The harness idea of that run is kept here: every CLI error path is one case of
`test_cli_error_paths` - exit code 2, exactly one `error:` line, no traceback, and nothing left in a
private TMPDIR or beside the outputs. The cases run in-process (click's CliRunner: ~ms each);
only behaviour that needs a fresh process (signals, a parent's death) starts one."""
from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import socket
import signal
import subprocess
import sys
import time
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from serve_helpers import running
from test_runners import tiny_onnx, tiny_torch
from test_reliability_round2_export import TINY_META, _tiny_ir
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.model_file import ModelInfo
from tinyvim.backends.registry import check_model, get_backend, read_model_info
from tinyvim.cli import cli
from tinyvim.contract import ExportMetadata
from tinyvim.errors import TinyvimError
from tinyvim.serve.load import bench_repository, endpoint_address, server_statistics
from tinyvim.tools import noise
from tinyvim.tools import profile as profile_mod
from tinyvim.tools import validate as validate_mod
from tinyvim.tools.compare import Tolerance
from tinyvim.tools.validate import chunk_images, format_table, validate_runner
from tinyvim.utils import plural

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small inputs the error cases point at: a model with TinyViM's signature and metadata, an
    export report (.json), a text proto, a picture folder and a lone picture, a pickled object."""
    root = tmp_path_factory.mktemp("round3")
    meta = ExportMetadata("s", input_size=(64, 64), batch=2).to_props()
    onnx.save(tiny_onnx(tiny_torch(), batch=2, size=64, metadata=meta), root / "tiny.onnx")
    (root / "export.json").write_text('{"schema_version": 1, "path": "tiny.onnx", "variant": "s"}\n')
    (root / "model.textproto").write_text('ir_version: 8\ngraph { name: "g" }\n')
    (root / "imgs").mkdir()
    Image.fromarray(np.full((70, 90, 3), 128, np.uint8)).save(root / "imgs" / "a.png")
    os.symlink("loop", root / "loop")
    torch.save({"model": {"w": torch.zeros(1)}, "args": Path("x")}, root / "pickled.pth")
    return root


def _error_line(result) -> str:
    """The one `error:` line of an exit-2 result (notes and warnings may precede it)."""
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith(("note:", "warning:"))]
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _cases(d: Path):
    """(arguments, text the error line must hold). {d} is the fixture folder."""
    m, o = str(d / "tiny.onnx"), str(d / "out.onnx")
    return [
        # 1: a model path ending in .json / .textproto is read by content: one line, in every command
        (["validate", str(d / "export.json")], "is not an ONNX model: it is a text file"),
        (["validate", str(d / "model.textproto")], "is not an ONNX model"),
        (["profile", "--backend", "ort", "--model", str(d / "export.json")], "is not an ONNX model: it is a text"),
        (["quantize", str(d / "export.json"), "--calib-random", "2", "-o", o], "is not an ONNX model: it is a text"),
        # 2: quantize checks --crop-pct like validate (before the model is read)
        *[(["quantize", m, "--calib", str(d / "imgs"), "--crop-pct", v, "-o", o], f"--crop-pct {v}")
          for v in ("-1", "0", "inf", "5", "0.001")],
        (["quantize", m, "--calib", str(d / "imgs"), "--crop-pct", "nan", "-o", o], "--crop-pct nan: use a fraction"),
        # 6: a symlink loop as the Triton repository
        (["export", "--fmt", "triton", "--img-size", "64", "-o", str(d / "loop")], "Too many levels of symbolic"),
        # 15: wording
        (["validate", m, "--images", str(d / "imgs" / "a.png")], "a file, not a folder (pass the folder"),
        (["quantize", m, "--calib", str(d / "imgs" / "a.png"), "-o", o], "--calib"),
        (["profile", "--backend", "trt", "--model", m], "--backend trt runs a TensorRT engine, and --model gave"),
        (["exprot"], "did you mean 'export'?"),
        # 5: serve-bench
        (["serve-bench", "--url", "http://[::1"], "is not host:port"),
        (["serve-bench", "--repo", str(d), "--duration", "nan", "--tritonserver", str(d / "no-server")], "--duration"),
        (["info", "--checkpoint", str(d / "pickled.pth")], "pickled pathlib"),
    ]


def test_cli_error_paths(files, tmp_path, monkeypatch):
    """Each case: exit 2, one `error:` line holding the expected text, no traceback, nothing
    written in a private TMPDIR nor in the fixture folder."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    before = sorted(p.name for p in files.rglob("*"))
    failures = []
    for args, expected in _cases(files):
        r = CliRunner().invoke(cli, args)
        try:
            line = _error_line(r)
            assert expected is None or expected in line, line
        except AssertionError as exc:
            failures.append(f"{' '.join(args)}: {exc}")
    assert not failures, "\n".join(failures)
    assert os.listdir(private) == []
    assert sorted(p.name for p in files.rglob("*")) == before


def test_a_file_of_the_wrong_kind_is_named_in_words():
    """15: 'x.xml is an OpenVINO IR', not 'is OPENVINO'."""
    info = ModelInfo(path="m.xml", kind="openvino", input_name="images", input_shape=[1, 3, 64, 64],
                     output_names=["logits"])
    with pytest.raises(TinyvimError) as exc:
        check_model(get_backend("ort"), info)
    assert "backend ort runs an ONNX model or an ORT-format model, and m.xml is an OpenVINO IR: use --backend ov" in str(exc.value)


def test_counts_agree_with_their_noun():
    """15: '1 image', '1 batch', not '1 images' / 'batch(es)'."""
    report = {"outputs": [], "passed": True, "backend": {"name": "ort"}, "reference": {"variant": "s"},
              "inputs": {"num_batches": 1, "batch": 1}, "tolerance": {"precision": "fp32", "atol": 1e-4, "rtol": 1e-3}}
    assert "(TinyViM-S, 1 image, fp32" in format_table(report)
    report["inputs"]["batch"] = 3
    assert "(TinyViM-S, 3 images, fp32" in format_table(report)
    assert [plural(1, "batch"), plural(2, "batch"), plural(0, "image")] == ["1 batch", "2 batches", "0 images"]


# --------------------------------------------------------------------- 3: quantize and SIGTERM/SIGHUP
_PAUSED_QUANTIZE = """
import sys, time
import onnxruntime.quantization.quant_utils as qu
real = qu.load_model_with_shape_infer
def paused(path):   # inside ORT's own ort.quant.* folder: say so and wait for the signal
    print("inside", path, flush=True)
    time.sleep(120)
    return real(path)
qu.load_model_with_shape_infer = paused
from tinyvim.cli import main
main(sys.argv[1:])
"""


def test_quantize_killed_by_sigterm_or_sighup_leaves_nothing(tinyvim_onnx, tmp_path):
    """3: the real quantizer, paused inside ONNX Runtime's own temporary folder: SIGTERM and SIGHUP
    end it by the signal and leave neither tinyvim-quantize-* nor ort.quant.* in its TMPDIR, and no -o."""
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        tmp = tmp_path / sig.name
        tmp.mkdir()
        procs[sig] = (tmp, subprocess.Popen(
            [sys.executable, "-c", _PAUSED_QUANTIZE, "quantize", str(tinyvim_onnx), "--calib-random", "2",
             "-o", str(tmp_path / f"{sig.name}.onnx")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TMPDIR": str(tmp)}))
    for sig, (tmp, proc) in procs.items():
        line = proc.stdout.readline()
        assert line.startswith("inside") and "ort.quant." in line, (line, proc.stderr.read() if not line else "")
        assert any(tmp.rglob("ort.quant.*")), "the pause is not inside ORT's folder: the test checks nothing"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -sig, (proc.returncode, err)
        assert "Traceback" not in err, err
        # .ses: a 51-byte id file ONNX Runtime's native library writes into $TMPDIR when it is imported
        # (any `import onnxruntime` does it, in every run): not a leftover of the interrupted work
        assert [p.name for p in tmp.iterdir() if p.name != ".ses"] == [], list(tmp.rglob("*"))
        assert not (tmp_path / f"{sig.name}.onnx").exists()


# --------------------------------------------------------------------- 4: Ctrl-C while importing
_CTRL_C_CHECK = """
import os, signal, sys, threading
from tinyvim.errors import TinyvimError
from tinyvim.lazy import import_optional
timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
timer.start()
try:
    import_optional("slow_binding")
    print("imported")
except KeyboardInterrupt:
    print("interrupted")
finally:
    timer.cancel()
try:
    import_optional("absent_binding")
except TinyvimError as exc:
    print(exc)
"""


def test_ctrl_c_while_a_binding_initialises_is_interrupted_not_missing(tmp_path):
    """4: a native binding turns the KeyboardInterrupt of its initialisation into an ImportError
    (pybind11 does, OpenVINO showed it); import_optional says `interrupted` (exit 130), not
    "not installed". The module waits for the SIGINT the child sends itself, like a slow init
    would. In a fresh process (like the other signal tests): sent inside a pytest worker that had
    run other files, the SIGINT twice took the worker down ("node down: Not properly terminated",
    no fault logged; the same file alone under a worker passed)."""
    (tmp_path / "slow_binding.py").write_text(
        "import time\n"
        "try:\n    time.sleep(30)\n"
        "except KeyboardInterrupt:\n    raise ImportError('initialization failed') from None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_CHECK], capture_output=True, text=True, timeout=60, env=env)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[0] == "interrupted", (proc.stdout, proc.stderr[-2000:])
    # a binding that is simply absent is still "not installed", one line
    assert len(lines) == 2 and "absent_binding is not installed" in lines[1], proc.stdout


# --------------------------------------------------------------------- 5: serve-bench
def test_serve_bench_said_in_one_line_when_the_server_goes_away_or_the_url_is_broken(tmp_path):
    """5: statistics from a server that has gone (a closed port: connection refused) are one
    line, not ConnectionRefusedError; an unclosed IPv6 bracket is not host:port; a NaN duration
    is refused before --repo would start a server (no tritonserver exists at the path given:
    without the early check the error would be about the binary)."""
    with socket.socket() as sock:       # a port nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TinyvimError, match="stopped answering during the run"):
        server_statistics(f"127.0.0.1:{port}", "tinyvim")
    with pytest.raises(TinyvimError, match="is not host:port"):
        endpoint_address("http://[::1", "http")
    with pytest.raises(TinyvimError, match="--duration"):
        bench_repository(tmp_path, "tinyvim", server_path=tmp_path / "tritonserver", duration_s=math.nan)


# --------------------------------------------------------------------- 7: IR through a symlinked .xml
def test_an_ir_through_a_symlinked_xml_is_a_valid_pair_at_both_names(tmp_path):
    """7: -o x.xml -> real/model.xml, an older pair at the target and a stale regular x.bin: the
    new .bin is written beside the .xml actually written (real/model.bin) and x.bin becomes a link
    to it. Both names read (check_ir_weights inside read_model_info) and OpenVINO computes the new
    model through both: the same logits as ONNX Runtime on the source ONNX."""
    ov = pytest.importorskip("openvino", reason="the IR cases need the openvino extra")
    real = tmp_path / "real"
    real.mkdir()
    _tiny_ir(ov, real, "model.xml", seed=1)                          # the older pair at the target
    shutil.copy(real / "model.bin", tmp_path / "x.bin")              # and a stale x.bin beside the link
    (tmp_path / "x.xml").symlink_to(real / "model.xml")
    _tiny_ir(ov, tmp_path, "x.xml", seed=0)
    assert (tmp_path / "x.xml").is_symlink() and (tmp_path / "x.bin").is_symlink()
    assert os.path.realpath(tmp_path / "x.bin") == str(real / "model.bin")
    for name in (tmp_path / "x.xml", real / "model.xml"):
        assert read_model_info(name).metadata == TINY_META
    images = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    expected = OrtRunner(tmp_path / "tiny0.onnx").activate().infer({"images": images})["logits"]
    for name in (tmp_path / "x.xml", real / "model.xml"):
        got = ov.Core().compile_model(str(name), "CPU")(images)[0]
        # the same fp32 graph in two runtimes: kernel order differs (~1e-6 relative); another seed's
        # weights (the stale pair) differ by O(1)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "tiny0.onnx", "x.bin", "x.xml"]


# --------------------------------------------------------------------- 8: serve's child dies with it
_SERVE_PARENT = """
import sys
from tinyvim.serve.server import TritonServer, find_triton
server = TritonServer(sys.argv[1], ports={"http": 0, "grpc": 0, "metrics": 0})
server.install = find_triton(sys.argv[2])
server.start(600)      # the stand-in never gets ready: the parent waits here until it is killed
"""


def test_the_tritonserver_child_dies_when_serve_is_sigkilled(tmp_path):
    """8: SIGKILL gives tinyvim no chance to stop its server, and the server runs in its own
    session (no terminal signal reaches it): without PR_SET_PDEATHSIG it stays with PPID 1. The
    stand-in tritonserver (a full install's layout: bin/tritonserver, backends/) records its PID
    and sleeps; it must be gone within seconds of its parent."""
    root = tmp_path / "triton"
    (root / "bin").mkdir(parents=True)
    (root / "backends").mkdir()
    binary = root / "bin" / "tritonserver"
    binary.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'server.pid'}\nexec sleep 300\n")
    binary.chmod(0o755)
    (tmp_path / "repo" / "tinyvim").mkdir(parents=True)
    parent = subprocess.Popen([sys.executable, "-c", _SERVE_PARENT, str(tmp_path / "repo"), str(binary)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "server.pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        assert parent.poll() is None, parent.stderr.read()
        time.sleep(0.05)
    server_pid = int(pid_file.read_text())
    assert running(server_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while running(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = running(server_pid)
    if alive:
        os.kill(server_pid, signal.SIGKILL)
    assert not alive, "the server outlived its parent (orphaned, PPID 1)"


# --------------------------------------------------------------------- 9: validate in bounded chunks
class _Spy:
    """A runner that records the batch size of every call it passes on."""

    def __init__(self, runner):
        self.runner, self.sizes = runner, []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __enter__(self):
        self.runner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.runner.__exit__(*exc)

    def infer(self, feed):
        self.sizes.append(feed["images"].shape[0])
        return self.runner.infer(feed)


def _tiny_runner(tmp_path, seed, batch=None):
    path = tmp_path / f"tiny{seed}-{batch}.onnx"
    onnx.save(tiny_onnx(tiny_torch(seed), batch=batch, size=32), path)
    return _Spy(OrtRunner(path))


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_validate_runs_big_batches_in_chunks_with_the_same_results(tmp_path, fixed_batch):
    """9: a batch of 37 with a limit of 5 images per call: no call to the reference holds more
    than 5 (and none to the target unless its file fixes the batch at 37), and the comparison is
    the one of the unchunked run. The two models differ (other seeds) so every metric is non-trivial.
    Tolerance: per-row results of ORT do not depend on how many rows share a call beyond float
    summation order (1e-6 relative on these 10 logits)."""
    images = [np.random.default_rng(s).standard_normal((37, 3, 32, 32)).astype(np.float32) for s in (0, 1)]
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)
    results = {}
    for chunk in (None, 5):
        target = _tiny_runner(tmp_path, 0, 37 if fixed_batch else None)
        reference = _tiny_runner(tmp_path, 1)
        results[chunk] = validate_runner(target, reference, iter(images), tolerance, chunk=chunk,
                                         chunk_target=not fixed_batch).comparison
        if chunk:
            assert max(reference.sizes) == 5 and sum(reference.sizes) == 74
            assert target.sizes == ([37, 37] if fixed_batch else reference.sizes)
    whole, chunked = (results[k].outputs[0].to_dict() for k in (None, 5))
    assert whole["max_abs_err"] > 0.01 and not whole["passed"]           # the models do differ
    for key, value in whole.items():
        if isinstance(value, float):
            assert chunked[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert chunked[key] == value, key


def test_chunk_size_follows_the_pixel_limit():
    assert chunk_images((224, 224)) == 32 and chunk_images((64, 64)) == 392
    assert chunk_images((4096, 4096), chunk_pixels=1000) == 1


# --------------------------------------------------------------------- 10: progress on silent phases
def test_validate_says_progress_per_batch_with_images_per_second(tmp_path, monkeypatch):
    """10: once a run is slower than PROGRESS_AFTER_S (0 here), each batch gets a line with its
    count and both sides' images/s."""
    monkeypatch.setattr(validate_mod, "PROGRESS_AFTER_S", 0.0)
    lines = []
    batches = (np.zeros((4, 3, 32, 32), np.float32) for _ in range(3))
    validate_runner(_tiny_runner(tmp_path, 0), _tiny_runner(tmp_path, 0), batches, Tolerance(atol=1e-4, rtol=1e-3),
                    total=3, log=lines.append)
    assert len(lines) == 3, lines
    for i, line in enumerate(lines, 1):
        assert re.fullmatch(rf"  batch {i}/3 \({4 * i} images\): reference [0-9.]+ images/s, backend [0-9.]+ "
                            r"images/s", line), line


_FAKE_PIP = """#!/usr/bin/env bash
echo "$@" >> "$(dirname "$0")/calls"
echo "Requirement already satisfied: numpy in ./.venv/lib"
echo "Collecting torch==2.13.0"
echo "  Downloading torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl (190.0 MB)"
echo "Installing collected packages: torch"
echo "Successfully installed torch-2.13.0"
if [ -n "${FAIL_ON:-}" ] && [[ "$*" == *"$FAIL_ON"* ]]; then
    echo "ERROR: No matching distribution found for $FAIL_ON"; exit 1
fi
"""


def _script_copy_with_venv(root: Path, script: str, python: str) -> Path:
    """scripts/<script> copied under `root`, beside a .venv whose bin/python is the stand-in
    shell script `python` (it records its arguments in bin/calls). Returns that python."""
    (root / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / script, root / "scripts" / script)
    fake = root / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(python)
    fake.chmod(0o755)
    return fake


def test_setup_shows_each_step_and_what_pip_fetches(tmp_path):
    """10: scripts/setup.sh (run on a copy whose .venv/bin/python is a stand-in printing pip's
    kind of output) says each step, the packages pip collects/downloads/installs and the time,
    not pip's already-satisfied chatter; no -qq silence; a failing step names itself, exit != 0."""
    fake = _script_copy_with_venv(tmp_path, "setup.sh", _FAKE_PIP)
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "setup: torch (CPU build) ..." in lines and re.search(r"^setup: torch \(CPU build\) done \(\d+ s\)$",
                                                                   r.stdout, re.M), r.stdout
    assert "  Collecting torch==2.13.0" in lines and "  installed: torch-2.13.0" in lines
    assert any(ln.startswith("  Downloading torch-2.13.0") and ln.endswith("(190.0 MB)") for ln in lines)
    assert "already satisfied" not in r.stdout
    calls = (fake.parent / "calls").read_text().splitlines()
    assert len(calls) == 4 and not any("-qq" in c.split() for c in calls), calls
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "FAIL_ON": "torch==2.13.0"})
    assert r.returncode == 1 and "setup: torch (CPU build) failed (pip exit status 1)" in r.stderr, (r.stdout, r.stderr)
    assert "  ERROR: No matching distribution found for torch==2.13.0" in r.stdout
    assert "tinyvim and its" not in r.stdout


# --------------------------------------------------------------------- 13: gpu_check.sh
_FAKE_VENV_PYTHON = """#!/usr/bin/env bash
echo "$@" >> "$(dirname "$0")/calls"
if [ "$1" = "-c" ]; then echo 3.11.7; exit 0; fi
if [ -n "${WRITE_REPORT:-}" ]; then
    while [ $# -gt 0 ]; do if [ "$1" = "--json" ]; then echo '{}' > "$2"; fi; shift; done
    echo "gpu_check: all sections done"; exit 0
fi
echo "ModuleNotFoundError: No module named 'torch'"; exit 1
"""


def test_gpu_check_uses_the_project_venv_and_names_only_a_report_it_wrote(tmp_path):
    """13: with a .venv in the repository its python runs the check (not the system python3);
    a run that wrote no report does not say `report: ...` (an old report from an earlier run is
    not this run's); a run that wrote one names it."""
    venv_python = _script_copy_with_venv(tmp_path, "gpu_check.sh", _FAKE_VENV_PYTHON)
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpu_check.json").write_text('{"old": true}')
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "OUT")}
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "gpu_check.sh"), str(out)], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 1 and "No module named 'torch'" in r.stdout
    assert "no report written" in r.stdout and "report: " not in r.stdout, r.stdout
    assert any("-m tinyvim.tools.gpu_check" in c for c in (venv_python.parent / "calls").read_text().splitlines())
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "gpu_check.sh"), str(out)], capture_output=True,
                       text=True, timeout=60, env={**env, "WRITE_REPORT": "1"})
    assert r.returncode == 0 and f"(report: {out / 'gpu_check.json'})" in r.stdout, r.stdout


# --------------------------------------------------------------------- 11: timings that say when not to trust them
_STAT = "cpu  {user} 0 {system} {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n"


def test_noise_limits_each_become_a_reason():
    quiet = noise.assess({"torch batch 1": 0.05}, load_average=2.1, cores=2, threads=2, steal=0.0, throttle_events=0)
    assert quiet.trustworthy and quiet.verdict().startswith("timing conditions: load average 2.1 on 2 cores")
    busy = noise.assess({"torch batch 1": 2.9, "ort batch 1": 0.04}, load_average=12.4, cores=2, threads=2,
                        steal=0.07, throttle_events=3)
    assert not busy.trustworthy and len(busy.reasons) == 4, busy.reasons
    text = busy.verdict()
    assert text.startswith("warning: these timings are not trustworthy")
    for part in ("load average 12.4 on 2 cores", "7.0% of CPU time stolen", "throttled 3 times",
                 "spread by up to 290% (torch batch 1; 1 of 2 series"):
        assert part in text, (part, text)
    # each limit alone, just over and just under
    assert noise.assess({"a": noise.MAX_SPREAD + 0.01}, load_average=None, cores=2, threads=2, steal=None,
                        throttle_events=None).reasons
    assert noise.assess({"a": noise.MAX_SPREAD - 0.01}, load_average=2.4, cores=2, threads=2,
                        steal=noise.MAX_STEAL - 0.001, throttle_events=0).trustworthy


def test_spread_steal_and_throttling_are_measured(tmp_path):
    """relative_spread against numpy's percentiles by hand; steal from two /proc/stat snapshots
    (the aggregate line: steal is its 8th field, of the sum of the first 8); throttle counters
    summed over the files the kernel would show, as a difference over the run."""
    times = [10.0] * 8 + [30.0, 10.0]
    p10, p50, p90 = np.percentile(times, [10, 50, 90])
    assert noise.relative_spread(times) == pytest.approx((p90 - p10) / p50) and noise.relative_spread([5.0]) == 0
    assert noise.cpu_times(_STAT.format(user=10, system=5, idle=80, steal=5)) == (100, 5)
    stat = tmp_path / "stat"
    (tmp_path / "cpu0" / "thermal_throttle").mkdir(parents=True)
    counter = tmp_path / "cpu0" / "thermal_throttle" / "core_throttle_count"
    stat.write_text(_STAT.format(user=100, system=50, idle=800, steal=50))
    counter.write_text("7\n")
    monitor = noise.NoiseMonitor(2, proc_stat=str(stat), throttle_glob=str(tmp_path / "cpu*/thermal_throttle/*_count"))
    with monitor:
        stat.write_text(_STAT.format(user=150, system=60, idle=860, steal=80))   # +150 jiffies, 30 stolen
        counter.write_text("9\n")
    report = monitor.report({"x": 0.01})
    assert report.steal == pytest.approx(30 / 150) and report.throttle_events == 2
    assert noise.NoiseMonitor(2, proc_stat=str(tmp_path / "absent"),
                              throttle_glob=str(tmp_path / "none*")).report({}).steal is None


def test_profile_says_when_its_figures_are_not_trustworthy(tmp_path, monkeypatch):
    """profile's screen and JSON carry the noise verdict: a busy machine (load average 40 on these
    cores) gets the warning line, and the JSON says trustworthy=false with the reason."""
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_onnx(tiny_torch(), size=32), model)
    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 40.0, 40.0))
    r = CliRunner().invoke(cli, ["profile", "--backend", "ort", "--model", str(model), "--warmup", "0", "--iters",
                                 "5", "--threads", "1", "--json", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    assert "warning: these timings are not trustworthy (load average 40.0 on" in r.output, r.output
    document = json.loads((tmp_path / "p.json").read_text())
    assert document["noise"]["trustworthy"] is False and "load average 40.0" in document["noise"]["reasons"][0]
    assert set(document["noise"]["spread"]) == {"ort batch 1"} and "spread" in document["results"][0]


def test_the_ceiling_verdict_states_its_conditions_and_refuses_a_busy_run():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        cpu_ceiling = importlib.import_module("cpu_ceiling")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    quiet = noise.assess({"torch": 0.03}, load_average=2.0, cores=2, threads=2, steal=0.0, throttle_events=None)
    busy = noise.assess({"torch": 1.5}, load_average=11.0, cores=2, threads=2, steal=0.0, throttle_events=None)
    line = cpu_ceiling.ceiling_verdict(6.4, 6.0, quiet, batch=8, threads=2)
    assert "within reach - for batch 8, 2 threads" in line and "load average 2.0 on 2 cores" in line
    assert "out of reach" in cpu_ceiling.ceiling_verdict(3.0, 6.0, quiet, batch=8, threads=2)
    line = cpu_ceiling.ceiling_verdict(6.4, 6.0, busy, batch=8, threads=2)
    assert "NO VERDICT" in line and "within reach" not in line and "load average 11.0" in line


# --------------------------------------------------------------------- 12: plots
def test_plots_label_the_measured_batches_and_show_the_tables_statistic():
    """x ticks read 1, 8, 32 (not 2^0, 2^3, 2^5); with stat='p50' (serve-bench, whose table shows
    p50) the lines are the p50s; the profile title names precision and file."""
    pytest.importorskip("matplotlib")
    entries = [{"backend": "ort", "batch": b, "concurrency": b,
                "latency_ms": {"mean": 10.0 * b, "p50": 9.0 * b, "p90": 12.0 * b}} for b in (1, 8, 32)]
    fig = profile_mod.latency_figure(entries, "t", stat="p50")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "8", "32"]
    assert list(ax.lines[0].get_ydata()) == [9.0, 72.0, 288.0] and "p50" in ax.get_ylabel()
    document = {"variant": "s", "img_size": [224, 224], "settings": {"threads": 2},
                "models": [{"path": "/runs/s.int8.onnx", "kind": "onnx", "precision": "int8"}]}
    assert profile_mod.profile_title(document) == "TinyViM-S 224x224, int8 (s.int8.onnx), 2 threads"
    fig.clf()
