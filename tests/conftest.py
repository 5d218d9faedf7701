import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))
# CI and the developers' machines have 2 cores; pin it so timings and thread pools agree.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Property tests are seeded (derandomize: the same examples every run, no example database)
# and small; each test sets its own max_examples so the fuzz suite stays within its budget.
settings.register_profile("tinyvim", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("tinyvim")

#: the session's small export (TinyViM-S, random weights, seed 0)
SIZE = 64
BATCH = 2


@pytest.fixture(scope="session")
def tinyvim_onnx(tmp_path_factory):
    """One 64x64, batch-2 portable export shared by every test that needs a real model file."""
    from tinyvim.contract import InputSpec, ModelSpec
    from tinyvim.export import export_onnx
    path = tmp_path_factory.mktemp("export") / "tinyvim_s64.onnx"
    export_onnx(path, ModelSpec("s"), InputSpec((SIZE, SIZE), BATCH))
    return path


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory):
    """The trained digits fixture (tests/data, scripts/train_fixture.py) exported once at 64x64 with a
    dynamic batch, for the evaluate, benchmark and accuracy-budget tests."""
    from digits_data import FIXTURE_CHECKPOINT, FIXTURE_SIZE
    from tinyvim.contract import InputSpec, ModelSpec
    from tinyvim.export import export_onnx
    path = tmp_path_factory.mktemp("digits") / "digits_s64.onnx"
    export_onnx(path, ModelSpec("s", checkpoint=FIXTURE_CHECKPOINT), InputSpec(size=(FIXTURE_SIZE, FIXTURE_SIZE),
                                                                               batch=None))
    return path
