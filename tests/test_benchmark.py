"""`tinyvim benchmark` on the trained fixture: rows from the registry (a throwaway backend's row
appears and its failure stays in its row), numbers equal to independent counts, skipped rows say
why, and the four outputs."""
from __future__ import annotations

import csv
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from digits_data import FIXTURE_CHECKPOINT, FIXTURE_SIZE, write_pictures
from tinyvim.backends import registry
from tinyvim.backends.base import BaseRunner
from tinyvim.backends.spec import Backend, BenchmarkRow
from tinyvim.backends.trt import trt_missing
from tinyvim.errors import TinyvimError
from tinyvim.model import create_model
from tinyvim.ops import scan_implementation
from tinyvim.tools.benchmark import format_markdown, run_benchmark, select_rows, write_outputs
from tinyvim.tools.inputs import preprocess_image

PICTURES = 12


def _broken(req):
    raise RuntimeError("this backend is broken on purpose")


def test_benchmark_table_on_the_fixture(digits_onnx, tmp_path):
    data = tmp_path / "flat"
    written = write_pictures(data, "heldout", "flat", limit=PICTURES)
    registry.register(Backend("broken", "a throwaway backend", _broken, model_kinds=("onnx",),
                              benchmark_rows=(BenchmarkRow("broken fp32", "fp32", "onnx"),
                                              BenchmarkRow("absent fp32", "fp32", "onnx",
                                                           unavailable=lambda: "not on this machine"))))
    try:
        report = run_benchmark(checkpoint=str(FIXTURE_CHECKPOINT), img_size=(FIXTURE_SIZE, FIXTURE_SIZE), data=data,
                               formats="ort-fp32,ort-int8,broken,trt", batches=(1, 2), iters=2, warmup=0,
                               files={"onnx": str(digits_onnx)}, workdir=tmp_path / "work", log=lambda m: None)
    finally:
        registry.unregister("broken")
    rows = {e["row"]: e for e in report["rows"]}
    assert list(rows)[:3] == ["torch eager", "ORT fp32", "ORT int8"]        # registry order, eager kept
    assert rows["broken fp32"]["status"] == "failed" and "broken on purpose" in rows["broken fp32"]["reason"]
    assert rows["absent fp32"]["status"] == "skipped" and rows["absent fp32"]["reason"] == "not on this machine"
    if trt_missing():
        assert rows["TRT fp16"]["status"] == "skipped" and rows["TRT fp16"]["reason"] == trt_missing()
    assert all(rows[k]["status"] == "ok" for k in ("torch eager", "ORT fp32", "ORT int8"))

    # the same numbers computed directly on the same tensors
    x = np.stack([preprocess_image(data / name, (FIXTURE_SIZE, FIXTURE_SIZE)) for name, _ in written])
    labels = np.array([y for _, y in written])
    with torch.inference_mode(), scan_implementation("sequential"):
        ref = create_model("s", checkpoint=FIXTURE_CHECKPOINT)(torch.from_numpy(x)).numpy()
    onnx_logits = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert report["reference_top1"] == np.mean(ref.argmax(1) == labels)
    fp32 = rows["ORT fp32"]
    assert fp32["top1"] == np.mean(onnx_logits.argmax(1) == labels)
    assert fp32["top1_agreement"] == np.mean(onnx_logits.argmax(1) == ref.argmax(1))
    cos = (onnx_logits.astype(np.float64) * ref).sum(1) / np.linalg.norm(onnx_logits, axis=1) / np.linalg.norm(ref, axis=1)
    assert fp32["worst_cosine"] == pytest.approx(cos.min(), abs=1e-6)     # float32 logits, float64 sums
    assert fp32["delta_top1"] == pytest.approx((fp32["top1"] - report["reference_top1"]) * 100)
    assert fp32["size_mb"] == pytest.approx(digits_onnx.stat().st_size / 1e6) and fp32["make_s"] == 0.0
    assert rows["ORT int8"]["size_mb"] < 0.4 * fp32["size_mb"]          # int8 weights: ~1/4 of fp32
    eager = rows["torch eager"]
    assert eager["speedup"] == 1.0
    assert fp32["speedup"] == pytest.approx(eager["p50_ms_b1"] / fp32["p50_ms_b1"])
    assert fp32["throughput"] == pytest.approx(2e3 / fp32["latency_ms"]["2"]["p50"])
    assert fp32["latency_ms"]["1"]["iters"] == 2 and fp32["latency_ms"]["2"]["iters"] == 2

    paths = write_outputs(report, tmp_path / "out")
    table = format_markdown(report)
    assert "broken fp32 | broken | failed: RuntimeError: this backend is broken on purpose" in table
    with open(paths[1]) as f:
        assert [r["row"] for r in csv.DictReader(f)] == list(rows)
    assert json.loads(paths[2].read_text())["rows"][1]["top1"] == fp32["top1"]
    assert paths[3].stat().st_size > 1000 and paths[3].read_bytes()[:4] == b"\x89PNG"


def test_formats_are_checked():
    assert [r.label for _, r in select_rows("ort-int8")] == ["torch eager", "ORT int8"]
    with pytest.raises(TinyvimError, match="--formats onnx-q: unknown"):
        select_rows("onnx-q")


def test_bad_options_are_refused_before_any_work(digits_onnx, tmp_path):
    """Every option is checked at the boundary: a checkpoint that does not load, a --file of the
    wrong kind or precision, a missing --calib folder, --workers 0, a --workdir that is a file: one `error:` line,
    exit 2, before "exporting ..." or any other phase starts, and nothing written."""
    from click.testing import CliRunner

    from tinyvim.cli import cli
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    work, out = tmp_path / "work", tmp_path / "out"
    common = ["benchmark", "--img-size", "64", "--batch", "1", "--iters", "1", "--workdir", str(work),
              "--out-dir", str(out), "--no-plot"]
    cases = {("--checkpoint", str(corrupt)): "cannot read checkpoint",
             ("--file", f"onnx-int8={corrupt}"): "onnx-int8",
             ("--file", f"engine-fp16={digits_onnx}"): "an onnx file, and engine-fp16 is an engine file",
             ("--file", f"onnx-int8={digits_onnx}"): "the file is fp32, and onnx-int8 is int8",
             ("--calib", str(tmp_path / "missing")): "--calib",
             ("--workers", "0"): "--workers must be an integer from 1"}
    for args, message in cases.items():
        r = CliRunner().invoke(cli, [*common, *args])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (args, r.stderr)
        assert message in lines[0] and "Traceback" not in r.output, (args, lines[0])
        assert not work.exists() and not out.exists()
    r = CliRunner().invoke(cli, ["benchmark", "--workdir", str(a_file), "--iters", "1"])
    assert r.exit_code == 2 and "--workdir" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(TinyvimError, match="--workdir .*: not a folder"):       # the library says it too
        run_benchmark(workdir=a_file, log=lambda m: None)


class _LoggingRunner(BaseRunner):
    """Logs (name, batch) of every call into a list shared with the other rows; 'fails' raises on
    its third call at batch 1 (the timing phase's only batch-1 calls: fidelity runs at batch 2)."""

    def __init__(self, name, log):
        super().__init__(name)
        self.log, self._inputs, self._outputs, self.batch1_calls = log, ["images"], ["logits"], 0

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def infer_impl(self, feed):
        batch = feed["images"].shape[0]
        self.log.append((self.name, batch))
        self.batch1_calls += batch == 1
        if self.name == "fails" and self.batch1_calls == 3:
            raise RuntimeError("failed in the second timed round")
        return {"logits": np.ones((batch, 1000), np.float32)}, {}


def test_rows_are_timed_in_turn_and_a_failing_row_leaves_the_turns():
    """The timing loop: after the warm-up round every timed row is called once per round, in
    turn; a row that fails drops out of the rounds (said in its row) and the others go on.
    Timing row by row (a a a a, then b ...) fails the order."""
    log = []
    registry.register(Backend("logging", "records its calls", lambda req: _LoggingRunner(req.options["name"], log),
                              benchmark_rows=(BenchmarkRow("rows a", "fp32", "torch", options={"name": "a"}),
                                              BenchmarkRow("rows fails", "fp32", "torch", options={"name": "fails"}))))
    try:
        report = run_benchmark(img_size=(32, 32), formats="logging", batches=(1, 2), iters=3, warmup=1,
                               threads=1, log=lambda m: None)
    finally:
        registry.unregister("logging")
    timing = log[next(i for i, (_, b) in enumerate(log) if b == 1):]   # fidelity (batch 2) comes first
    assert "".join(n[0] for n, b in timing if b == 1) == "afafafa"        # warm-up, 1st round, 2nd fails, 3rd
    assert [n for n, b in timing if b == 2] == ["a"] * 4
    rows = {e["row"]: e for e in report["rows"]}
    assert rows["rows fails"]["status"] == "failed" and "second timed round" in rows["rows fails"]["reason"]
    assert rows["rows a"]["latency_ms"]["1"]["iters"] == 3 and rows["rows a"]["latency_ms"]["2"]["iters"] == 3
    assert rows["torch eager"]["status"] == "ok" and rows["torch eager"]["latency_ms"]["2"]["iters"] == 3
    # the conditions, as profile measures them: a spread for every series timed to the end
    assert set(report["noise"]["spread"]) == {f"{r} batch {b}" for r in ("torch eager", "rows a") for b in (1, 2)}
    assert report["noise"]["verdict"] in format_markdown(report)


def test_the_runs_own_threads_are_not_other_work():
    """The load-average flag counts what is beyond the run's own threads after it (a quiet 2-core run
    with 2 threads ends near load 2 - that is not other work), and still flags real other work."""
    from tinyvim.tools.benchmark import _report
    env = {"threads": 2, "usable_cores": 2}

    def flags(before, after):
        return [n for n in _report([], None, None, (1,), env, (before, 0, 0), (after, 0, 0), 2, "s", (64, 64),
                                   None, None)["noisy"] if "other work" in n]
    assert flags(0.3, 1.9) == []            # quiet: the run's own two threads
    assert len(flags(0.3, 3.5)) == 1        # 1.5 beyond them on 2 cores
    assert len(flags(1.6, 1.9)) == 1        # busy before the run started
