"""The GPU check script's code paths, exercised on the CPU (--dry-run: the CPU twin stands
in for the kernel), so that its first run on a lent GPU is likely to work."""
import json
import subprocess
from pathlib import Path

from tinyvim.tools import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_a_passing_report(tmp_path):
    out = tmp_path / "report" / "gpu_check.json"
    rc = gpu_check.main(["--dry-run", "--variants", "s", "--json", str(out), "--budget-s", "60"])
    report = json.loads(out.read_text())
    assert rc == 0, report["summary"]
    secs = report["sections"]
    assert list(secs) == ["env", "build", "accuracy", "model", "kernel_bench", "throughput"]
    assert all(s["ok"] for s in secs.values()), report["summary"]
    acc = secs["accuracy"]
    assert acc["all_pass"] and acc["worst_rel_err"]["float32"] <= 1e-5
    assert len(acc["cases"]) == len(gpu_check.ACCURACY_SHAPES)
    assert all(c["deterministic"] for c in acc["cases"])
    assert secs["model"]["variants"]["s"]["max_abs_diff_logits"] <= 1e-4   # twin in the whole model
    bench = secs["kernel_bench"]["rows"]
    assert {r["d_inner"] for r in bench if "d_inner" in r} <= {12, 16, 32, 48, 64, 84, 96, 168, 192, 288, 384}
    assert not list(out.parent.glob("*.tmp"))                                # atomic writes


def test_gpu_check_records_a_failing_section_and_goes_on(tmp_path):
    rep = gpu_check.Report(tmp_path / "r.json")
    entry = rep.section("boom", lambda: 1 / 0)
    assert not entry["ok"] and "ZeroDivisionError" in entry["error"]
    after = rep.section("fine", lambda: {"x": 1})
    assert after["ok"] and after["x"] == 1
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data["sections"]) == {"boom", "fine"}


def test_gpu_check_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")]).returncode == 0
