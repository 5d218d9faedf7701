"""The one safe writer (tinyvim.utils.atomic_output and friends): what it refuses, the modes it
gives, what it leaves behind after an exception or a signal, and that every command checks its
output paths before the work starts."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from tinyvim.cli import cli
from tinyvim.errors import TinyvimError
from tinyvim.utils import (TEMP_MARK, atomic_output, atomic_write_json, atomic_write_text, check_output_path,
                           check_output_paths, remove_stale_temps)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _temps(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARK in p.name)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("target", ["/dev/full", "/dev/null", "/dev/stdout", "/dev/fd/1", "/proc/self/status",
                                    "/sys/kernel/x.json"])
def test_devices_and_system_paths_are_refused(target):
    # As root too: these are refused by what they are, not by a permission check.
    with pytest.raises(TinyvimError, match="device or system file, not a regular file"):
        check_output_path(target)


def test_fifo_directory_and_symlinks_to_them_are_refused(tmp_path, fifo):
    (tmp_path / "to_full").symlink_to("/dev/full")
    (tmp_path / "to_fifo").symlink_to(fifo)
    (tmp_path / "to_pipe").symlink_to("/proc/self/fd/1")
    cases = {fifo: "a FIFO", tmp_path: "it is a directory", f"{tmp_path}/": "names a directory",
             tmp_path / "to_full": "/dev/full is a device", tmp_path / "to_fifo": "is a FIFO",
             tmp_path / "to_pipe": "/proc/self/fd/1 is a device or system file"}
    for target, reason in cases.items():
        with pytest.raises(TinyvimError, match=reason):
            atomic_write_text(target, "x")
    assert os.readlink(tmp_path / "to_full") == "/dev/full" and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert _temps(tmp_path) == []


def test_symlink_target_is_written_and_the_link_kept(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real) and real.read_text() == "new"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "sub" / "made.json")
    atomic_write_text(dangling, "fresh")                     # the target (and its folder) is created
    assert dangling.is_symlink() and (tmp_path / "sub" / "made.json").read_text() == "fresh"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_new_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.json", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new.json") == 0o666 & ~umask


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o755, 0o444, 0o664])
def test_replaced_files_keep_their_mode(tmp_path, mode):
    target = tmp_path / "old.json"
    target.write_text("old")
    os.chmod(target, mode)
    old = os.umask(0o077)           # the umask must not leak into an existing file
    try:
        atomic_write_text(target, "new")
    finally:
        os.umask(old)
    assert target.read_text() == "new" and _mode(target) == mode


def test_an_exception_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            assert tmp.suffix == ".onnx" and tmp.parent == tmp_path   # the format stays visible by name
            raise RuntimeError("boom")
    assert target.read_bytes() == b"previous" and _temps(tmp_path) == []


def test_write_errors_become_one_line_errors(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    with pytest.raises(TinyvimError, match=r"cannot write .*r\.json: No space left on device"):
        with atomic_output(target) as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    assert not target.exists() and _temps(tmp_path) == []


def test_same_file_twice_or_over_an_input_is_refused(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    with pytest.raises(TinyvimError, match="name the same file"):
        check_output_paths({"-o": tmp_path / "a.json", "--json": tmp_path / "." / "a.json"})
    with pytest.raises(TinyvimError, match="would overwrite the input given as MODEL"):
        check_output_paths({"--json": model}, inputs={"MODEL": model})
    with pytest.raises(TinyvimError, match="unsupported format '.txt'"):
        check_output_paths({"--plot": tmp_path / "p.txt"}, suffixes={"--plot": (".png",)})


def test_strict_json_has_no_nan(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [1.0, None], "c": {"d": 2}}


# --------------------------------------------------------------------- signals (real processes)
_WRITER = textwrap.dedent("""
    import sys, time
    from tinyvim.utils import atomic_output
    with atomic_output(sys.argv[1]) as tmp:
        tmp.write_bytes(b"partial")
        print(tmp, flush=True)
        time.sleep(60)
""")


def _killed_writer(target, sig):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    tmp = proc.stdout.readline().strip()
    assert tmp and os.path.exists(tmp), proc.stderr.read()
    proc.send_signal(sig)
    proc.wait(timeout=30)
    return proc, tmp


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_removes_the_temp_and_still_terminates(tmp_path, sig):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    proc, tmp = _killed_writer(target, sig)
    assert proc.returncode == -sig                  # died of the signal, as without our handler
    assert not os.path.exists(tmp) and target.read_bytes() == b"previous" and _temps(tmp_path) == []


def test_sigint_removes_the_temp(tmp_path):
    target = tmp_path / "r.json"
    proc, tmp = _killed_writer(target, signal.SIGINT)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr.read()
    assert not os.path.exists(tmp) and not target.exists() and _temps(tmp_path) == []


def test_sigkill_leftover_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    proc, tmp = _killed_writer(target, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert os.path.exists(tmp) and target.read_bytes() == b"previous"   # SIGKILL cannot be caught...
    atomic_write_text(target, "next run")                              # ... the next write sweeps it
    assert not os.path.exists(tmp) and target.read_text() == "next run" and _temps(tmp_path) == []


def test_a_live_writers_temp_is_not_swept(tmp_path):
    target = tmp_path / "r.json"
    with atomic_output(target) as mine:
        mine.write_text("in progress")
        assert remove_stale_temps(target) == [] and mine.exists()


# --------------------------------------------------------------------- commands check before the work
def _one_error(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_commands_refuse_bad_outputs_before_any_work(tmp_path, fifo, tinyvim_onnx):
    before = tinyvim_onnx.read_bytes()
    cases = [
        (["export", "--img-size", "64", "-o", "/dev/full"], "tracing"),
        (["export", "--img-size", "64", "-o", str(tmp_path / "m.onnx"), "--json", str(fifo)], "tracing"),
        (["info", "--img-size", "64", "--json", "/dev/stdout"], "parameters"),
        (["validate", str(tinyvim_onnx), "--json", str(fifo)], "validating"),
        (["validate", str(tinyvim_onnx), "--json", str(tinyvim_onnx)], "validating"),
        (["profile", "--backend", "torch", "--img-size", "64", "--iters", "1", "--warmup", "0",
          "--plot", str(tmp_path / "p.txt")], "timing"),
        (["profile", "--backend", "torch", "--img-size", "64", "--json", "/dev/full"], "timing"),
    ]
    for args, work_marker in cases:
        r = CliRunner().invoke(cli, args)
        assert "cannot write" in _one_error(r) or "overwrite the input" in _one_error(r), args
        assert work_marker not in r.output, (args, r.output)     # refused before the work started
    assert tinyvim_onnx.read_bytes() == before and not (tmp_path / "m.onnx").exists()


def test_ignored_signals_stay_ignored_and_handlers_are_restored(tmp_path):
    """nohup / `cmd &` in a script ignore SIGHUP / SIGINT: such a signal must not stop or
    disturb a write; outside a write every handler is what it was."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with atomic_output(tmp_path / "r.json") as tmp:
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (before[signal.SIGTERM], signal.SIG_IGN)
            os.kill(os.getpid(), signal.SIGHUP)              # ignored: the write goes on
            tmp.write_text("done")
        assert (tmp_path / "r.json").read_text() == "done"
    finally:
        signal.signal(signal.SIGHUP, old_hup)
    assert {s: signal.getsignal(s) for s in before} == before
