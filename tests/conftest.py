import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
# CI and the developers' machines have 2 cores; pin it so timings and thread pools agree.
torch.set_num_threads(min(2, os.cpu_count() or 1))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def s64_onnx(tmp_path_factory):
    """A clean TinyViM-S export at 64x64, batch 2 (seed 0: `validate` rebuilds its reference
    from the metadata), shared by the ov and per-block tests: one export instead of two."""
    from tinyvim.export import export_onnx
    path = tmp_path_factory.mktemp("s64") / "s64.onnx"
    export_onnx(path, variant="s", img_size=(64, 64), batch=2)
    return path
