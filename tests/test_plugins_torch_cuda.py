"""The torch "cuda" scan: harmless without a GPU (clear error on use); on a machine with a
GPU and the built library, checked against the float64 reference."""
import numpy as np
import pytest
import torch

import tinyvim.plugins.torch_cuda as torch_cuda
from tinyvim.ops import available_scan_implementations, cross_selective_scan, scan_implementation
from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs
from tinyvim.plugins import PluginError


def _inputs(*shape, dtype=torch.float32, device="cpu"):
    return {k: torch.from_numpy(v).to(device=device, dtype=dtype)
            for k, v in random_scan_inputs(*shape, seed=11).items()}


def test_import_registers_cuda_without_loading_anything():
    assert "cuda" in available_scan_implementations()
    ok, why = torch_cuda.cuda_scan_available()
    assert isinstance(ok, bool) and why


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_scan_on_cpu_tensors_is_a_clear_error():
    inp = _inputs(1, 3, 2, 2, 8)
    with scan_implementation("cuda"), pytest.raises(PluginError) as info:
        cross_selective_scan(*inp.values())
    msg = str(info.value)
    assert "needs CUDA tensors" in msg and "torch.cuda.is_available() is False" in msg
    assert "\n" not in msg


gpu = pytest.mark.skipif(not torch_cuda.cuda_scan_available()[0],
                         reason="needs a CUDA GPU and the built libtinyvim_scan_cuda.so")


@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(1, 5, 3, 4, 8), (3, 13, 7, 5, 16), (2, 96, 7, 7, 8), (1, 3, 20, 21, 8)])
def test_cuda_scan_matches_reference(shape, dtype, tol):
    inp = _inputs(*shape, dtype=torch.float32, device="cuda")
    io = {k: (v.to(dtype) if k in ("x", "delta", "Bs", "Cs") else v) for k, v in inp.items()}
    ref = cross_selective_scan_reference(**{k: v.double().cpu().numpy() for k, v in io.items()})
    y = torch_cuda.scan_cuda(*io.values())
    assert y.dtype == dtype and y.shape == io["x"].shape
    err = np.abs(y.double().cpu().numpy() - ref).max() / np.abs(ref).max()
    assert err <= tol
