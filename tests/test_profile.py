"""Profiling: statistics on known timing arrays, the timing loop on a scripted runner, and
one quick end-to-end `tinyvim profile` run (torch backend, 2 iterations)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinyvim.tools import profile as prof
from tinyvim.backends.base import BaseRunner


def test_latency_stats_on_known_array():
    times_s = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=float) * 1e-3  # ms 1..10
    s = prof.latency_stats(times_s)
    assert s["mean"] == pytest.approx(5.5)
    assert s["p50"] == pytest.approx(5.5)
    # linear interpolation: position 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9)
    assert s["p90"] == pytest.approx(9.1)
    assert s["p99"] == pytest.approx(9.91)
    assert s["std"] == pytest.approx(np.sqrt(8.25))  # population std of 1..10
    assert (s["min"], s["max"], s["iters"]) == (1.0, 10.0, 10)
    assert prof.throughput(8, 4.0) == pytest.approx(2000.0)


class ScriptedRunner(BaseRunner):
    """Reports pre-set compute and copy times instead of measuring; `log` records its calls
    (activate, infer and the input it got, deactivate) in one list shared between runners."""

    def __init__(self, times, name="scripted", log=None):
        super().__init__(name)
        self._times = iter(times)
        self.calls = 0
        self.log = [] if log is None else log

    input_names = property(lambda self: ["images"])
    output_names = property(lambda self: ["logits"])

    def activate_impl(self):
        self.log.append(("activate", self.name))

    def deactivate_impl(self):
        self.log.append(("deactivate", self.name))

    def infer_impl(self, feed):
        self.calls += 1
        self.log.append(("infer", self.name, feed["images"]))
        return {"logits": np.zeros((1, 10))}, {"compute": next(self._times), "h2d": 0.5e-3}


def test_backends_are_timed_in_turn_after_their_warm_ups():
    """Two backends at two batch sizes: every runner is up before the first call, and at each
    batch size the calls alternate a, b, a, b: warm-up rounds first, then the timed ones, on one
    input batch. Sequential timing (a a a a b b b b) fails the order; the samples show which
    calls were timed (warm-ups report 1 s)."""
    log = []
    script = {"a": [1.0, 0.002, 0.004, 0.006] * 2, "b": [1.0, 0.010, 0.020, 0.030] * 2}
    factories = {n: (lambda n=n: ScriptedRunner(script[n], n, log)) for n in "ab"}
    entries = prof.profile_backends(factories, [1, 2], (32, 32), warmup=1, iters=3)

    assert log[:2] == [("activate", "a"), ("activate", "b")] and log[-2:] == [("deactivate", "b"),
                                                                               ("deactivate", "a")]
    calls = [entry for entry in log if entry[0] == "infer"]
    assert [name for _, name, _ in calls] == ["a", "b"] * 4 * 2          # (1 warm-up + 3 timed) x 2 batches
    for batch, round_calls in ((1, calls[:8]), (2, calls[8:])):
        inputs = [x for _, _, x in round_calls]
        assert all(x is inputs[0] for x in inputs) and inputs[0].shape == (batch, 3, 32, 32)

    assert [(e["backend"], e["batch"]) for e in entries] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    by = {(e["backend"], e["batch"]): e for e in entries}
    assert by["a", 1]["latency_ms"]["mean"] == pytest.approx(4.0)       # (2 + 4 + 6) / 3: no 1 s warm-up in it
    assert by["b", 2]["latency_ms"]["mean"] == pytest.approx(20.0)
    assert by["b", 2]["latency_ms"]["iters"] == 3 and by["a", 1]["phases_ms"] == {"h2d": pytest.approx(0.5)}


def test_progress_says_each_batch_once_then_each_result(monkeypatch):
    lines = []
    prof.profile_backends({n: (lambda n=n: ScriptedRunner([0.01] * 10, n)) for n in "ab"}, [1], (32, 32),
                          warmup=2, iters=3, log=lines.append)
    assert lines == ["batch 1: timing a, b in turn (2 warm-up rounds, then 3 rounds)...",
                     "[1/2] a batch 1: 10.00 ms mean, 100.0 img/s", "[2/2] b batch 1: 10.00 ms mean, 100.0 img/s"]
    monkeypatch.setattr(prof, "PROGRESS_EVERY_S", 0.0)      # a batch slower than the interval: rounds are said
    lines.clear()
    prof.profile_backends({"a": lambda: ScriptedRunner([0.01] * 10, "a")}, [1], (32, 32), warmup=1, iters=3,
                          log=lines.append)
    assert lines[0] == "batch 1: timing a (1 warm-up round, then 3 rounds)..."
    assert lines[1:3] == ["batch 1: round 1 of 3", "batch 1: round 2 of 3"] and len(lines) == 4


def test_profile_backends_skips_unsupported_batches_and_formats():
    entries = prof.profile_backends({"scripted": lambda: ScriptedRunner([0.01] * 100)}, [1, 8], (32, 32),
                                    warmup=1, iters=4, batch_ok=lambda n, b: "fixed batch 1" if b == 8 else None)
    assert entries[0]["latency_ms"]["mean"] == pytest.approx(10.0)
    assert entries[0]["throughput"] == pytest.approx(100.0)
    assert entries[0]["phases_ms"]["h2d"] == pytest.approx(0.5)
    assert entries[1] == {"backend": "scripted", "batch": 8, "skipped": "fixed batch 1"}
    table = prof.format_table(entries)
    assert "10.00" in table and "skipped: fixed batch 1" in table


def test_environment_names_versions():
    env = prof.environment(2)
    assert env["threads"] == 2 and env["torch"] and env["onnxruntime"] and env["cpu"]


def test_profile_cli_torch_json_and_plot(tmp_path):
    from tinyvim.commands.engines import profile
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    result = CliRunner().invoke(profile, ["--backend", "torch-fused", "--variant", "s", "--img-size", "64",
                                          "--batch", "1,2", "--warmup", "1", "--iters", "2", "--threads", "2",
                                          "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert [(e["backend"], e["batch"]) for e in doc["results"]] == [("torch-fused", 1), ("torch-fused", 2)]
    assert all(e["latency_ms"]["iters"] == 2 and e["latency_ms"]["mean"] > 0 for e in doc["results"])
    assert doc["environment"]["threads"] == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[2/2] torch-fused batch 2" in result.output


def test_profile_cli_bad_input_exit_2(tmp_path):
    from tinyvim.commands.engines import profile
    r = CliRunner().invoke(profile, ["--backend", "tpu"])
    assert r.exit_code == 2 and "unknown backend 'tpu'" in r.output
    r = CliRunner().invoke(profile, ["--backend", "trt"])
    assert r.exit_code == 2 and "needs --model with a TensorRT engine" in r.output
    r = CliRunner().invoke(profile, ["--backend", "torch", "--img-size", "100"])
    assert r.exit_code == 2 and "not divisible by 32" in r.output
    r = CliRunner().invoke(profile, ["--batch", "1,x"])
    assert r.exit_code == 2 and "--batch" in r.output


def test_profile_ort_without_model_exports_a_dynamic_batch_onnx(tmp_path, monkeypatch):
    import onnx

    from test_runners import tiny_onnx, tiny_torch
    from tinyvim.commands.engines import profile
    calls = []

    def fake_export(output, model, inputs, **kwargs):  # the tiny net stands in for TinyViM: only the plumbing
        calls.append((model, inputs, kwargs))
        onnx.save(tiny_onnx(tiny_torch(), size=64), output)

        class Result:
            path = output
        return Result()

    monkeypatch.setattr(prof, "export_onnx", fake_export)
    out = tmp_path / "p.json"
    r = CliRunner().invoke(profile, ["--backend", "ort", "--img-size", "64", "--batch", "1,3", "--warmup", "0",
                                     "--iters", "3", "--json", str(out)])
    assert r.exit_code == 0, r.output
    from tinyvim.contract import InputSpec, ModelSpec
    assert calls == [(ModelSpec("s"), InputSpec((64, 64), None), {})]    # dynamic batch: one file for 1 and 3
    doc = json.loads(out.read_text())
    assert [(e["backend"], e["batch"], e["latency_ms"]["iters"]) for e in doc["results"]] == [("ort", 1, 3), ("ort", 3, 3)]
