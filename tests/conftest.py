import os
import shutil
import sys
from pathlib import Path

# Before torch loads its OpenMP runtime (which reads this once, at load): a thread that waits for
# work sleeps instead of spinning. The suite runs two pytest workers on two cores, each starting
# tools in subprocesses; spinning threads only took CPU from the work (4 torch-heavy files, two
# workers, Zen 3 2 cores: 101 s user -> 81 s; with one torch thread per worker as below, 69 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))
# CI and the developers' machines have 2 cores: the cores are shared out among the pytest-xdist
# workers (scripts/test.sh runs two: one thread each), so the workers' torch threads never outnumber
# the cores. One process alone keeps two, as the tools' defaults do. Tests that time or compare
# thread counts set their own.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))

# Property tests are seeded (derandomize: the same examples every run, no example database)
# and small; each test sets its own max_examples so the fuzz suite stays within its budget.
settings.register_profile("tinyvim", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("tinyvim")

#: The longest test files, longest first (CPU seconds in a cold two-worker run on 2 cores, 2026-12-07:
#: 154, 88, 79, 71, 70, 48, 41, 37, 36, 33, 32, 29, 27; every other file is under 25). scripts/test.sh hands
#: files to the two workers in collection order (--no-loadscope-reorder; xdist's default order puts the
#: files with the most tests first, which left these few-test files to the end, one worker running the
#: last of them while the other idled: 44 s apart in one run). Longest first, the short files fill in last.
LONGEST_FIRST = ["test_trt_contract.py", "test_export.py", "test_kernel_on_cpu_mutants.py", "test_dynamic_size.py",
                 "test_reliability_round2_export.py", "test_docs_examples.py", "test_accuracy_budget.py",
                 "test_scan_op_pt2.py", "test_quantize.py", "test_plugins_build.py", "test_ov_extension.py",
                 "test_export_targets.py", "test_serve_server.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: files keep their own order


#: the session's small export (TinyViM-S, random weights, seed 0)
SIZE = 64
BATCH = 2


def made_once(tmp_path_factory, worker_id: str, name: str, make) -> Path:
    """The file `name`, made by make(path) once per run and copied into a folder of this worker's.

    Under pytest-xdist the workers share the run's temporary root: the first worker to ask makes
    the file there under a lock (an export is ~10 s of CPU; every worker used to make its own),
    the others wait for it. Each caller gets its own copy, so a test that writes beside the file
    (a quantized twin, a sidecar) never meets another worker's. `make` must write atomically."""
    from filelock import FileLock
    own = tmp_path_factory.mktemp(Path(name).stem) / name
    if worker_id == "master":                       # one process: nothing to share
        make(own)
        return own
    shared = tmp_path_factory.getbasetemp().parent / "made-once"
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared / f"{name}.lock")):
        if not (shared / name).is_file():
            make(shared / name)
    shutil.copyfile(shared / name, own)
    return own


@pytest.fixture(scope="session")
def tinyvim_onnx(tmp_path_factory, worker_id):
    """One 64x64, batch-2 portable export shared by every test that needs a real model file."""
    from tinyvim.contract import InputSpec, ModelSpec
    from tinyvim.export import export_onnx
    return made_once(tmp_path_factory, worker_id, "tinyvim_s64.onnx",
                     lambda path: export_onnx(path, ModelSpec("s"), InputSpec((SIZE, SIZE), BATCH)))


@pytest.fixture(scope="session")
def plugin_onnx(tmp_path_factory, worker_id):
    """TinyViM-S 64x64, plugin flavour, batch 1 (seed 0): validate's custom-op run and the
    TensorRT contract's static-batch nodes."""
    from tinyvim.contract import InputSpec, ModelSpec
    from tinyvim.export import export_onnx
    return made_once(tmp_path_factory, worker_id, "tinyvim_s64_plugin_b1.onnx",
                     lambda path: export_onnx(path, ModelSpec("s"), InputSpec((SIZE, SIZE), 1), scan="plugin"))


@pytest.fixture(scope="session")
def plugin_dyn_onnx(tmp_path_factory, worker_id):
    """TinyViM-S 64x64, plugin flavour, dynamic batch (seed 0): the OpenVINO extension's model
    and the TensorRT contract's symbolic-batch nodes."""
    from tinyvim.contract import InputSpec, ModelSpec
    from tinyvim.export import export_onnx
    return made_once(tmp_path_factory, worker_id, "tinyvim_s64_plugin_dyn.onnx",
                     lambda path: export_onnx(path, ModelSpec("s"), InputSpec((SIZE, SIZE), None), scan="plugin"))


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory, worker_id):
    """The trained digits fixture (tests/data, scripts/train_fixture.py) exported once at 64x64 with a
    dynamic batch, for the evaluate, benchmark and accuracy-budget tests."""
    from digits_data import FIXTURE_CHECKPOINT, FIXTURE_SIZE
    from tinyvim.contract import InputSpec, ModelSpec
    from tinyvim.export import export_onnx
    return made_once(tmp_path_factory, worker_id, "digits_s64.onnx",
                     lambda path: export_onnx(path, ModelSpec("s", checkpoint=FIXTURE_CHECKPOINT),
                                              InputSpec(size=(FIXTURE_SIZE, FIXTURE_SIZE), batch=None)))
